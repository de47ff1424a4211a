"""Outputs of `sigscope trace`: a live text table and JSON Lines."""

from __future__ import annotations

import json
import time
from typing import TextIO

from .event import Event

TEXT_COLUMNS = ("TIME", "PID", "TID", "COMM", "VIA", "SIG", "TPID", "TTID", "TCOMM", "RESULT",
                "OUTCOME")
# pid_max is at most 4194304 (7 digits); comm at most 15 bytes; rt_tgsigqueueinfo is 17.
_TEXT_FORMAT = "{:<12} {:>7} {:>7} {:<16} {:<17} {:<12} {:>7} {:>7} {:<16} {:<8} {}"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def result_text(event: Event) -> str:
    if event.result is None:
        return "-"
    if event.result < 0:
        return f"-{event.error}"
    return str(event.result)


class TextWriter:
    """One line per record, the killsnoop columns extended. TIME is the wall clock, or with
    `relative` the seconds since tracing began."""

    def __init__(self, out: TextIO, relative: bool = False) -> None:
        self.out = out
        self.relative = relative
        self._first_ktime: int | None = None

    def header(self) -> None:
        self.out.write(_TEXT_FORMAT.format(*TEXT_COLUMNS) + "\n")

    def _time(self, event: Event) -> str:
        if self.relative:
            if self._first_ktime is None:
                self._first_ktime = event.ktime_ns
            return f"{(event.ktime_ns - self._first_ktime) / 1e9:.6f}"
        seconds, nanos = divmod(event.time_ns, 1_000_000_000)
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{nanos // 1_000_000:03d}"

    def events(self, events: list[Event]) -> None:
        fmt = _TEXT_FORMAT.format
        lines = [
            fmt(self._time(e), e.sender_pid, e.sender_tid, e.sender_comm, e.via, e.signal,
                _dash(e.target_pid), _dash(e.target_tid), _dash(e.target_comm), result_text(e),
                _dash(e.outcome))
            for e in events
        ]
        if lines:
            self.out.write("\n".join(lines) + "\n")

    def lost(self, count: int, total: int) -> None:
        self.out.write(f"# LOST {count} records (total {total})\n")

    def flush(self) -> None:
        self.out.flush()


class JsonWriter:
    """JSON Lines: one object per record, plus {"type": "lost"} objects. Nothing else."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._dumps = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False).encode

    def header(self) -> None:
        pass

    def events(self, events: list[Event]) -> None:
        if events:
            dumps = self._dumps
            self.out.write("\n".join([dumps(e.to_dict()) for e in events]) + "\n")

    def lost(self, count: int, total: int) -> None:
        now = time.time_ns()
        seconds, nanos = divmod(now, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"
        self.out.write(self._dumps({"type": "lost", "time": stamp, "count": count}) + "\n")

    def flush(self) -> None:
        self.out.flush()
