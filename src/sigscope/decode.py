"""Records from the kernel -> Events.

Joins each FANOUT record (a further recipient of kill(-pgid)/kill(-1)) with the CALL record of
its syscall, which carries the return value, and fills target process ids and names that the
kernel did not report from /proc (cached briefly: a storm at one target must not cost a /proc
read per record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from . import record as rec
from .event import OUTCOMES, Event

# A FANOUT record whose CALL has not arrived after this long is reported without a return value
# (its CALL record was lost; the loss is counted).
FANOUT_WAIT_NS = 2_000_000_000
_PROC_CACHE_TTL_S = 1.0


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class ProcResolver:
    """What /proc says about a task now: its thread-group id, its command, a pidfd's pid."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._tgid: dict[int, tuple[float, int | None]] = {}
        self._comm: dict[int, tuple[float, str | None]] = {}

    def _status_field(self, tid: int, key: str) -> str | None:
        try:
            with open(f"{self.proc}/{tid}/status", "rb") as status:
                for line in status:
                    if line.startswith(key.encode()):
                        return line.split(b":", 1)[1].strip().decode()
        except OSError:
            return None
        return None

    def tgid(self, tid: int, now: float) -> int | None:
        hit = self._tgid.get(tid)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = self._status_field(tid, "Tgid")
        tgid = int(value) if value else None
        self._tgid[tid] = (now + _PROC_CACHE_TTL_S, tgid)
        if len(self._tgid) > 65536:
            self._tgid.clear()
        return tgid

    def comm(self, pid: int, now: float) -> str | None:
        hit = self._comm.get(pid)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            with open(f"{self.proc}/{pid}/comm", "rb") as f:
                comm: str | None = f.read().rstrip(b"\n").decode("utf-8", "replace")
        except OSError:
            comm = None
        self._comm[pid] = (now + _PROC_CACHE_TTL_S, comm)
        if len(self._comm) > 65536:
            self._comm.clear()
        return comm

    def pidfd_pid(self, holder_pid: int, fd: int) -> int | None:
        """The pid a pidfd refers to, from the holder's fdinfo (-1 there: the process is gone)."""
        try:
            with open(f"{self.proc}/{holder_pid}/fdinfo/{fd}", "rb") as info:
                for line in info:
                    if line.startswith(b"Pid:"):
                        pid = int(line.split()[1].split(b"\t")[0])
                        return pid if pid > 0 else None
        except (OSError, ValueError, IndexError):
            return None
        return None


class Decoder:
    """Turns batches of fixed-size records into Events, in order, each signal exactly once."""

    def __init__(
        self,
        resolver: ProcResolver | None = None,
        wall_offset_ns: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver or ProcResolver()
        if wall_offset_ns is None:
            wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.wall_offset_ns = wall_offset_ns
        self._monotonic = monotonic
        self._next_id = 1
        # (sender_tid, call_id) -> FANOUT tuples waiting for their CALL, and CALLs waiting for
        # FANOUT records that a perf buffer delivered from another CPU's ring.
        self._fanouts: dict[tuple[int, int], list[tuple]] = {}
        self._calls: dict[tuple[int, int], tuple] = {}
        self.records = 0
        self.malformed = 0

    def decode(self, batch: bytes) -> list[Event]:
        """Decode a batch of concatenated records."""
        if len(batch) % rec.RECORD_SIZE:
            self.malformed += 1
            batch = batch[: len(batch) - len(batch) % rec.RECORD_SIZE]
        return self.decode_tuples(rec.RECORD_STRUCT.iter_unpack(batch))

    def decode_tuples(self, rows: Iterable[tuple]) -> list[Event]:
        now = self._monotonic()
        events: list[Event] = []
        kind_i, tid_i, call_i = _IDX["kind"], _IDX["sender_tid"], _IDX["call_id"]
        for row in rows:
            kind = row[kind_i]
            if kind == rec.KIND_CALL:
                key = (row[tid_i], row[call_i])
                expected = row[_IDX["nemitted"]]
                if expected == 0:
                    events.append(self._event(row, row[_IDX["ret"]], now))
                    continue
                waiting = self._fanouts.get(key, [])
                if len(waiting) >= expected:
                    del self._fanouts[key]
                    events.extend(self._call_with_fanouts(row, waiting, now))
                else:
                    self._calls[key] = row
            elif kind == rec.KIND_FANOUT:
                key = (row[tid_i], row[call_i])
                self._fanouts.setdefault(key, []).append(row)
                call = self._calls.get(key)
                if call is not None and len(self._fanouts[key]) >= call[_IDX["nemitted"]]:
                    del self._calls[key]
                    events.extend(self._call_with_fanouts(call, self._fanouts.pop(key), now))
            elif kind == rec.KIND_KERNEL:
                events.append(self._event(row, None, now))
            else:
                self.malformed += 1
        if self._fanouts or self._calls:
            events.extend(self._expire(now, horizon_ktime=_latest_ktime(events)))
        return events

    def _call_with_fanouts(self, call: tuple, fanouts: list[tuple], now: float) -> list[Event]:
        ret = call[_IDX["ret"]]
        fanouts.sort(key=lambda row: row[_IDX["ngen"]])
        return [self._event(call, ret, now)] + [self._event(f, ret, now) for f in fanouts]

    def _expire(self, now: float, horizon_ktime: int | None, everything: bool = False) -> list:
        """Report FANOUTs whose CALL never came (lost), and CALLs missing FANOUTs (lost)."""
        out: list[Event] = []
        if horizon_ktime is None and not everything:
            return out
        for key in list(self._fanouts):
            rows = self._fanouts[key]
            if everything or horizon_ktime - rows[0][_IDX["ktime_ns"]] > FANOUT_WAIT_NS:
                del self._fanouts[key]
                call = self._calls.pop(key, None)
                if call is not None:
                    out.extend(self._call_with_fanouts(call, rows, now))
                else:
                    out.extend(self._event(row, None, now) for row in rows)
        for key in list(self._calls):
            call = self._calls[key]
            if everything or horizon_ktime - call[_IDX["ktime_ns"]] > FANOUT_WAIT_NS:
                del self._calls[key]
                out.append(self._event(call, call[_IDX["ret"]], now))
        return out

    def flush(self) -> list[Event]:
        """At the end of tracing: whatever still waits for a partner record."""
        return self._expire(self._monotonic(), None, everything=True)

    def _event(self, row: tuple, ret: int | None, now: float) -> Event:
        (ktime, _call_id, _ret, arg_pid, arg_tid, kind, via_code, sender_tgid, sender_tid,
         sender_uid, sig, arg_pidfd, _ngen, gen_code, _gen_errno, target_tid, gen_group,
         gen_result, _nemitted, _flags, _reserved, sender_comm, target_comm) = row
        self.records += 1
        via = rec.VIA_NAMES[via_code] if via_code < len(rec.VIA_NAMES) else str(via_code)
        resolver = self.resolver
        generated = gen_result != rec.GEN_NONE
        t_pid: int | None
        t_tid: int | None
        t_comm: str | None
        if generated:
            t_tid = target_tid
            t_comm = _comm(target_comm)
            if via in ("tgkill", "rt_tgsigqueueinfo"):
                t_pid = arg_pid
            elif target_tid == sender_tid:
                t_pid = sender_tgid
            else:
                t_pid = resolver.tgid(target_tid, now)
                if t_pid is None and gen_group:
                    t_pid = target_tid  # the kernel signalled the process through this task
            outcome = OUTCOMES[gen_result] if 0 <= gen_result < len(OUTCOMES) else None
            code: int | None = gen_code
        else:
            outcome, code = None, None
            t_pid, t_tid = _target_from_args(via, arg_pid, arg_tid)
            if via == "pidfd_send_signal":
                t_pid = resolver.pidfd_pid(sender_tgid, arg_pidfd)
            elif via == "tkill" and t_tid is not None:
                t_pid = resolver.tgid(t_tid, now)
            t_comm = resolver.comm(t_pid, now) if t_pid is not None else None
        event_id = self._next_id
        self._next_id += 1
        is_call = kind != rec.KIND_KERNEL
        return Event(
            id=event_id,
            ktime_ns=ktime,
            time_ns=ktime + self.wall_offset_ns,
            sig=sig,
            via=via,
            sender_pid=sender_tgid,
            sender_tid=sender_tid,
            sender_comm=_comm(sender_comm),
            sender_uid=sender_uid,
            target_pid=t_pid,
            target_tid=t_tid,
            target_comm=t_comm,
            arg_pid=_arg_pid(via, arg_pid) if is_call else None,
            arg_tid=arg_tid if via in ("tgkill", "rt_tgsigqueueinfo") else None,
            arg_pidfd=arg_pidfd if via == "pidfd_send_signal" else None,
            code=code,
            result=ret if is_call else None,
            outcome=outcome,
            group=bool(gen_group) if generated else None,
        )


_IDX = {name: i for i, name in enumerate(rec.FIELD_NAMES)}


def _latest_ktime(events: list[Event]) -> int | None:
    return events[-1].ktime_ns if events else None


def _arg_pid(via: str, arg_pid: int) -> int | None:
    return None if via == "pidfd_send_signal" else arg_pid


def _target_from_args(via: str, arg_pid: int, arg_tid: int) -> tuple[int | None, int | None]:
    """Target (pid, tid) of a call that generated nothing, from what it asked for."""
    if via in ("kill", "rt_sigqueueinfo"):
        return (arg_pid, None) if arg_pid > 0 else (None, None)
    if via == "tkill":
        return None, arg_pid if arg_pid > 0 else None
    if via in ("tgkill", "rt_tgsigqueueinfo"):
        return (arg_pid if arg_pid > 0 else None), (arg_tid if arg_tid > 0 else None)
    return None, None
