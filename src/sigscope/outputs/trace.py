"""Outputs of `sigscope trace`: a live text table and JSON Lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from sigscope.model.escape import encodes_everything, printable_for
from sigscope.model.event import Event, Runs

if TYPE_CHECKING:
    from sigscope.fate import Fate

TEXT_COLUMNS = ("TIME", "PID", "TID", "COMM", "VIA", "SIG", "TPID", "TTID", "TCOMM", "RESULT",
                "OUTCOME")
# pid_max is at most 4194304 (7 digits); comm at most 15 bytes; rt_tgsigqueueinfo is 17.
# TIME is HH:MM:SS.ffffff (microseconds, like strace -tt). TPID and TTID take what a send that
# reached nobody addressed too: "(-4194304)", 10 characters (_target_ids).
_TEXT_FORMAT = "{:<15} {:>7} {:>7} {:<16} {:<17} {:<12} {:>10} {:>10} {:<16} {:<8} {}"
# --fate: an ID column ties a signal ("#17") to its fate line ("->#17"); LAT and FATE follow.
FATE_TEXT_COLUMNS = (TEXT_COLUMNS[0], "ID", *TEXT_COLUMNS[1:], "LAT", "FATE")
_FATE_TEXT_FORMAT = ("{:<15} {:<9} {:>7} {:>7} {:<16} {:<17} {:<12} {:>10} {:>10} {:<16} {:<8} "
                     "{:<15} {:>6} {}")
# --containers: CONTAINER (the sender's) and TCONTAINER (the recipient's) after OUTCOME, before
# LAT with --fate. A cell is containers.container_label() (12 hex digits of the id, or a name
# from a local source), escaped; a name longer than the column widens its line.
CONTAINER_COLUMNS = ("CONTAINER", "TCONTAINER")
CONTAINER_WIDTH = 24
_CONTAINER_TEXT_FORMAT = _TEXT_FORMAT[:-2] + "{:<15} {:<24} {}"
_CONTAINER_FATE_TEXT_FORMAT = _FATE_TEXT_FORMAT.replace("{:<15} {:>6}",
                                                        "{:<15} {:<24} {:<24} {:>6}")


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _addressed(value: int | None) -> str:
    return "-" if value is None else f"({value})"


def _target_ids(e: Event) -> tuple[str, str]:
    """The TPID and TTID cells: the recipient's process and thread, as bare numbers.

    A send that generated nothing (it failed, or it was a signal-0 probe, to a group too) has
    no recipient: the cells then show what the call addressed, in parentheses, so that no
    argument reads as a recipient: its pid and tid arguments as passed (kill(-4242, sig):
    "(-4242)"; kill(0), kill(-1): "(0)", "(-1)"; tkill names only a thread), and for
    pidfd_send_signal, which names no pid, the process behind the pidfd as the decoder found
    it (/proc fdinfo). JSON keeps these apart as `target` and `args` (Event.to_dict)."""
    if e.outcome is not None or e.group is not None or e.result is None:
        return _dash(e.target_pid), _dash(e.target_tid)
    pid = e.target_pid if e.arg_pidfd is not None else e.arg_pid
    return _addressed(pid), _addressed(e.arg_tid)


def result_text(event: Event) -> str:
    if event.result is None:
        return "-"
    if event.result < 0:
        return f"-{event.error}"
    return str(event.result)


class _LineWriter:
    """What both writers share: rendered lines out, and Decoder.runs() rendered through the
    writer's own template(), stamp() and line()."""

    out: TextIO
    name: str

    def template(self, e: Event) -> str:
        raise NotImplementedError

    def stamp(self, seconds: int) -> str:
        raise NotImplementedError

    def line(self, e: Event) -> str:
        raise NotImplementedError

    def lines(self, lines: list[str]) -> None:
        """Lines rendered already (render())."""
        _write_lines(self.out, lines)

    def render(self, runs: Runs) -> list[str]:
        """The lines of Decoder.runs() output: exactly line() of each record's Event."""
        return render_runs(runs, self.name, self.template, self.stamp, self.line)

    def runs(self, runs: Runs) -> None:
        """Write Decoder.runs() output (only when renders_lines)."""
        _write_lines(self.out, self.render(runs))


class TextWriter(_LineWriter):
    """One line per record, the killsnoop columns extended. TIME is the wall clock, or with
    `relative` the seconds since tracing began.

    With `fate` (--fate) each line starts with the signal's id, and the signal's fate follows
    as a line of its own when it becomes known, tied by the id: ``->#17``. Its PID TID COMM are
    the thread that took the signal (or whose exit or sigaction decided it); LAT is the time
    from generation to delivery. The send is never held back: a signal that stays blocked
    shows FATE "..." until its fate line (at the latest "pending" when tracing ends)."""

    def __init__(self, out: TextIO, relative: bool = False, fate: bool = False,
                 containers: bool = False) -> None:
        self.out = out
        self.relative = relative
        self.fate = fate
        # --containers: two more columns, from Event.sender_container/target_container.
        self.containers = containers
        self._format = (_CONTAINER_TEXT_FORMAT if containers else _TEXT_FORMAT).format
        self._fate_format = (_CONTAINER_FATE_TEXT_FORMAT if containers
                             else _FATE_TEXT_FORMAT).format
        self._first_ktime: int | None = None
        # Names are escaped for what `out` can encode before they are padded (escape.py), so
        # every column starts where its header does and no write can fail on a character.
        encoding = getattr(out, "encoding", None)
        self._printable = printable_for(encoding)
        if not encodes_everything(encoding):
            # A shape's cached line is kept by output name: one per way of escaping.
            self.name = f"text:{encoding}"
        if containers:
            self.name += ":containers"

    def _comm(self, value: str | None) -> str:
        """A command name from the kernel or /proc: another process chose it (escape.py)."""
        return "-" if value is None else self._printable(value)

    def _containers(self, e: Event) -> tuple[str, ...]:
        """The CONTAINER and TCONTAINER cells (none without --containers)."""
        if not self.containers:
            return ()
        from sigscope.containers import container_label

        return (self._comm(container_label(e.sender_container)),
                self._comm(container_label(e.target_container)))

    def header(self) -> None:
        extra = CONTAINER_COLUMNS if self.containers else ()
        if self.fate:
            columns = (*FATE_TEXT_COLUMNS[:-2], *extra, *FATE_TEXT_COLUMNS[-2:])
            self.out.write(self._fate_format(*columns) + "\n")
        else:
            self.out.write(self._format(*TEXT_COLUMNS, *extra) + "\n")

    def _time(self, event: Event | Fate) -> str:
        if self.relative:
            if self._first_ktime is None:
                self._first_ktime = event.ktime_ns
            return f"{(event.ktime_ns - self._first_ktime) / 1e9:.6f}"
        seconds, nanos = divmod(event.time_ns, 1_000_000_000)
        return self.stamp(seconds) + f".{nanos // 1000:06d}"

    # The storm path (runs of one shape straight to lines, render_runs): used for the plain
    # live table (not with -t or --fate).
    name = "text"

    def stamp(self, seconds: int) -> str:
        return time.strftime("%H:%M:%S", time.localtime(seconds))

    def template(self, e: Event) -> str:
        """The line of `e` with holes for (id, second, microseconds, ktime): id and ktime are
        not shown (`%.0s` prints nothing)."""
        # Escaped here, once per shape: the storm path pays nothing per record (escape.py).
        rest = self._format(
            "\0", e.sender_pid, e.sender_tid, self._comm(e.sender_comm), e.via, e.signal,
            *_target_ids(e), self._comm(e.target_comm), result_text(e),
            _dash(e.outcome), *self._containers(e)).replace("%", "%%")
        # The time column: "%s.%06d" is always 15 characters, as the column is wide.
        return "%.0s" + rest.replace("\0" + " " * 14, "%s.%06d", 1) + "%.0s"

    def line(self, e: Event) -> str:
        return self._format(
            self._time(e), e.sender_pid, e.sender_tid, self._comm(e.sender_comm), e.via, e.signal,
            *_target_ids(e), self._comm(e.target_comm), result_text(e), _dash(e.outcome),
            *self._containers(e))


    @property
    def renders_lines(self) -> bool:
        """Whether runs() can produce this output (the plain table)."""
        return not (self.relative or self.fate)

    def events(self, events: Sequence[Event | Fate]) -> None:
        if self.fate:
            self._fate_events(events)
            return
        _write_lines(self.out, [self.line(e) for e in events if isinstance(e, Event)])

    def _fate_events(self, items: Sequence[Event | Fate]) -> None:
        from sigscope.fate import QUEUED_OUTCOMES, SIGCONT, format_latency  # only with --fate

        fmt = self._fate_format
        blank = ("", "") if self.containers else ()
        lines = []
        for e in items:
            if not isinstance(e, Event):  # a Fate
                lines.append(fmt(self._time(e), f"->#{e.id}", _dash(e.pid), _dash(e.tid),
                                 self._comm(e.comm), "", e.signal, "", "", "", "", "",
                                 *blank, format_latency(e.latency_ns), e.summary()))
            else:
                # A fate follows for a queued signal, and for a SIGCONT ignored once it had
                # resumed the process (fate.py).
                later = "..." if e.outcome in QUEUED_OUTCOMES or (
                    e.sig == SIGCONT and e.outcome == "ignored") else "-"
                lines.append(fmt(self._time(e), f"#{e.id}", e.sender_pid, e.sender_tid,
                                 self._comm(e.sender_comm), e.via, e.signal, *_target_ids(e),
                                 self._comm(e.target_comm), result_text(e),
                                 _dash(e.outcome), *self._containers(e), "-",
                                 later if e.outcome else "-"))
        if lines:
            self.out.write("\n".join(lines) + "\n")

    def lost(self, count: int, total: int) -> None:
        """Records that matched the filters and were lost (buffer or in-flight map full)."""
        self.out.write(f"# LOST {count} records after matching the filters (total {total})\n")

    def skipped(self, count: int, total: int) -> None:
        """Probe runs the kernel skipped: unknown whether they would have matched."""
        self.out.write(f"# SKIPPED {count} probe runs: the kernel skipped them while another "
                       f"BPF program ran on the CPU; unknown whether they matched "
                       f"(total {total})\n")

    def flush(self) -> None:
        self.out.flush()


# Lines are joined and written this many at a time: a larger string is a fresh multi-page
# allocation each time, and its page faults cost more (measured in a VM: bench/README.md) than
# the extra write calls.
_WRITE_CHUNK_LINES = 256


def _write_lines(out: TextIO, lines: list[str]) -> None:
    write = out.write
    for start in range(0, len(lines), _WRITE_CHUNK_LINES):
        write("\n".join(lines[start:start + _WRITE_CHUNK_LINES]) + "\n")


def render_runs(
    runs: Runs,
    name: str,
    template: Callable[[Event], str],
    stamp: Callable[[int], str],
    line: Callable[[Event], str],
) -> list[str]:
    """Lines of Decoder.runs() output, in order: the storm path of an output.

    Each shape is rendered once, by ``template(event)``, to a %-format string whose holes are,
    in order: the event id (%d), the wall-clock second as ``stamp(seconds)`` renders it (%s),
    the microseconds within it (%06d), and ktime_ns (%d); it is kept in ``shape.rendered[name]``.
    Then each record of a run costs one % and one append. Events (records off the hot path)
    are rendered by ``line(event)``."""
    lines: list[str] = []
    append = lines.append
    second, second_text = -1, ""
    ktimes, offset = runs.ktimes, runs.wall_offset_ns
    event_id, at = runs.first_id, 0
    for item, count in zip(runs.items, runs.lengths, strict=True):
        if isinstance(item, Event):
            append(line(item))
            event_id += 1
            continue
        text = item.rendered.get(name)
        if text is None:
            ktime = ktimes[at]
            text = item.rendered[name] = template(Event(event_id, ktime, ktime + offset, item))
        if count == 1:  # no slice, no inner loop: records of two senders interleaved
            ktime = ktimes[at]
            wall = ktime + offset
            seconds = wall // 1_000_000_000
            if seconds != second:
                second, second_text = seconds, stamp(seconds)
            append(text % (event_id, second_text, wall % 1_000_000_000 // 1000, ktime))
            event_id += 1
            at += 1
            continue
        for ktime in ktimes[at:at + count]:
            wall = ktime + offset
            seconds = wall // 1_000_000_000
            if seconds != second:
                second, second_text = seconds, stamp(seconds)
            append(text % (event_id, second_text, wall % 1_000_000_000 // 1000, ktime))
            event_id += 1
        at += count
    return lines


# Placeholders that JSON-encode to text no real value can produce.
_HOLE_ID, _HOLE_TIME, _HOLE_KTIME = "\0id\0", "\0time\0", "\0ktime\0"


class JsonWriter(_LineWriter):
    """JSON Lines: one object per record, plus {"type": "lost"} objects. Nothing else.

    The objects are exactly ``Event.to_dict()`` (a test holds the two together), but built from
    cached fragments: a signal storm repeats the same sender, target, signal and result over and
    over, and json.dumps of a fresh dict per record would cost several times more than the rest
    of the tracer's work.
    """

    def __init__(self, out: TextIO) -> None:
        import json  # here, not at the top: the text table's start-up does without it

        self.out = out
        # Compact separators: a storm writes hundreds of MB of these. Non-ASCII characters as
        # themselves where the output is Unicode, else as \uNNNN: valid JSON either way.
        ascii_only = not encodes_everything(getattr(out, "encoding", None))
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ascii_only).encode
        self._second = -1
        self._second_text = ""

    def header(self) -> None:
        pass

    # The storm path (runs of one shape straight to lines, render_runs).
    name = "json"
    renders_lines = True

    def stamp(self, seconds: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))

    def template(self, e: Event) -> str:
        return self._template(e)

    def line(self, e: Event | Fate) -> str:
        """The JSON text of one event (or fate): a cached template for all but id and times."""
        if not isinstance(e, Event):  # a Fate
            return self._dumps(e.to_dict())
        shape = e.shape
        template = shape.rendered.get("json")
        if template is None:
            template = shape.rendered["json"] = self._template(e)
        seconds, nanos = divmod(e.time_ns, 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._second_text = self.stamp(seconds)
        return template % (e.id, self._second_text, nanos // 1000, e.ktime_ns)


    def _template(self, e: Event) -> str:
        d = e.to_dict()
        d["id"], d["time"], d["ktime_ns"] = _HOLE_ID, _HOLE_TIME, _HOLE_KTIME
        text = self._dumps(d).replace("%", "%%")
        return (text.replace(self._dumps(_HOLE_ID), "%d")
                .replace(self._dumps(_HOLE_TIME), '"%s.%06dZ"')
                .replace(self._dumps(_HOLE_KTIME), "%d"))

    def events(self, events: Sequence[Event | Fate]) -> None:
        """Signal records; with --fate also {"type": "fate"} records (Fate.to_dict())."""
        if not events:
            return
        # event_json, inlined: this loop runs once per record at full signal rates.
        lines: list[str] = []
        append = lines.append
        second, second_text = self._second, self._second_text
        for e in events:
            if not isinstance(e, Event):  # a Fate
                append(self._dumps(e.to_dict()))
                continue
            try:
                template = e.shape.rendered["json"]
            except KeyError:  # a new shape
                template = e.shape.rendered["json"] = self._template(e)
            seconds, nanos = divmod(e.time_ns, 1_000_000_000)
            if seconds != second:
                second = seconds
                second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            append(template % (e.id, second_text, nanos // 1000, e.ktime_ns))
        self._second, self._second_text = second, second_text
        _write_lines(self.out, lines)

    def lost(self, count: int, total: int) -> None:
        """{"type": "lost"}: records that matched the filters and were lost."""
        self._count_record("lost", count)

    def skipped(self, count: int, total: int) -> None:
        """{"type": "skipped"}: probe runs the kernel skipped (unknown whether they matched)."""
        self._count_record("skipped", count)

    def _count_record(self, kind: str, count: int) -> None:
        now = time.time_ns()
        seconds, nanos = divmod(now, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"
        self.out.write(self._dumps({"type": kind, "time": stamp, "count": count}) + "\n")

    def flush(self) -> None:
        self.out.flush()
