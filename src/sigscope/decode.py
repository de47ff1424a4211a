"""Records from the kernel -> Events.

Joins each FANOUT record (a further recipient of kill(-pgid)/kill(-1)) with the CALL record of
its syscall, which carries the return value, and fills target process ids and names that the
kernel did not report from /proc (cached briefly: a storm at one target must not cost a /proc
read per record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from sigscope.model import record as rec
from sigscope.model.event import OUTCOMES, Event, Shape

# A FANOUT record whose CALL has not arrived after this long is reported without a return value
# (its CALL record was lost; the loss is counted).
FANOUT_WAIT_NS = 2_000_000_000
_PROC_CACHE_TTL_S = 1.0


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class LineRenderer(Protocol):
    """An output that renders events as lines through a template per event shape (outputs/trace.py).

    ``template(event)`` returns a %-format string whose holes are, in order: the event id (%d),
    the wall-clock second as ``stamp(seconds)`` renders it (%s), the microseconds within it
    (%06d), and ktime_ns (%d). ``line(event)`` renders any event (or fate) on its own."""

    name: str

    def template(self, event: Event) -> str: ...

    def stamp(self, seconds: int) -> str: ...

    def line(self, event: Event) -> str: ...


class StackOrigins(Protocol):
    """What a kernel stack id says about why a SIGKILL was sent (kstack.KernelStacks)."""

    def origin(self, stack_id: int) -> str | None: ...


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
        stacks: StackOrigins | None = None,
    ) -> None:
        self.resolver = resolver or ProcResolver()
        # Reads the kernel stacks of kernel-generated SIGKILLs (kstack.KernelStacks).
        self.stacks = stacks
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
        self._comms: dict[bytes, str] = {}
        self._shapes: dict[tuple | bytes, Shape] = {}
        self._kernel_shapes: dict[bytes, Shape] = {}
        self._shapes_expire = 0.0

    def decode(self, batch: bytes) -> list[Event]:
        """Decode a batch of concatenated records.

        The hot path (a call with at most one recipient, or a kernel signal) keys its decoding
        on the record's bytes after the time fields: a storm of equal signals is unpacked and
        decoded once, then each record costs one small unpack and one Event."""
        if len(batch) % rec.RECORD_SIZE:
            self.malformed += 1
            batch = batch[: len(batch) - len(batch) % rec.RECORD_SIZE]
        now = self._refresh_shapes()
        events: list[Event] = []
        append = events.append
        call_shapes, kernel_shapes = self._shapes, self._kernel_shapes
        offset = self.wall_offset_ns
        next_id = self._next_id
        unpack_rest = rec.REST_STRUCT.unpack
        for ktime, call_id, kind, nemitted, rest in rec.HOT_STRUCT.iter_unpack(batch):
            if nemitted == 0 and (kind == KIND_CALL or kind == KIND_KERNEL):
                shape = (call_shapes if kind == KIND_CALL else kernel_shapes).get(rest)
                if shape is None:
                    shape = self._hot_shape(ktime, call_id, kind, rest, now)
                append(Event(next_id, ktime, ktime + offset, *shape.fields, shape))
                next_id += 1
                continue
            self._next_id = next_id
            self._join((ktime, call_id, kind, nemitted, *unpack_rest(rest)), events, now)
            next_id = self._next_id
        return self._finish_batch(events, next_id, now)

    def render(self, batch: bytes, renderer: LineRenderer) -> list[str]:
        """decode() and the renderer in one pass: the text lines of a batch, in order.

        Records of a known shape go straight to text through the renderer's template for that
        shape, without an Event object: the storm path of `sigscope trace --json`. The lines
        are exactly renderer.line(event) of the events decode() would return."""
        if len(batch) % rec.RECORD_SIZE:
            self.malformed += 1
            batch = batch[: len(batch) - len(batch) % rec.RECORD_SIZE]
        now = self._refresh_shapes()
        lines: list[str] = []
        append = lines.append
        call_shapes, kernel_shapes = self._shapes, self._kernel_shapes
        offset = self.wall_offset_ns
        next_id = self._next_id
        unpack_rest = rec.REST_STRUCT.unpack
        name, stamp = renderer.name, renderer.stamp
        second, second_text = -1, ""
        last_rest, last_kind, template = None, -1, ""
        for ktime, call_id, kind, nemitted, rest in rec.HOT_STRUCT.iter_unpack(batch):
            if nemitted == 0 and (kind == KIND_CALL or kind == KIND_KERNEL):
                # A storm repeats the previous record: comparing bytes beats hashing them.
                if rest != last_rest or kind != last_kind:
                    shape = (call_shapes if kind == KIND_CALL else kernel_shapes).get(rest)
                    if shape is None:
                        shape = self._hot_shape(ktime, call_id, kind, rest, now)
                    template = shape.rendered.get(name)
                    if template is None:
                        template = shape.rendered[name] = renderer.template(
                            Event(next_id, ktime, ktime + offset, *shape.fields, shape))
                    last_rest, last_kind = rest, kind
                wall = ktime + offset
                seconds = wall // 1_000_000_000
                if seconds != second:
                    second, second_text = seconds, stamp(seconds)
                append(template % (next_id, second_text, wall % 1_000_000_000 // 1000, ktime))
                next_id += 1
                continue
            self._next_id = next_id
            joined: list[Event] = []
            self._join((ktime, call_id, kind, nemitted, *unpack_rest(rest)), joined, now)
            lines.extend(renderer.line(e) for e in joined)
            next_id = self._next_id
        expired = self._finish_batch([], next_id, now)
        lines.extend(renderer.line(e) for e in expired)
        return lines

    def _hot_shape(self, ktime: int, call_id: int, kind: int, rest: bytes, now: float) -> Shape:
        """Decode a hot-path record (a call with at most one recipient, or a kernel signal)
        seen for the first time, and remember its shape under its bytes. Separate caches per
        kind: the kind is not part of the bytes."""
        shapes = self._shapes if kind == KIND_CALL else self._kernel_shapes
        if len(shapes) > 4096:
            shapes.clear()
        row = (ktime, call_id, kind, 0, *rec.REST_STRUCT.unpack(rest))
        ret = row[_RET] if kind == KIND_CALL else None
        shape = shapes[rest] = Shape(self._decode_fields(row, ret, now))
        return shape

    def _refresh_shapes(self) -> float:
        now = self._monotonic()
        if now >= self._shapes_expire:
            # Refresh what /proc told us about targets at least once a second.
            self._shapes.clear()
            self._kernel_shapes.clear()
            self._shapes_expire = now + 1.0
        return now

    def _finish_batch(self, events: list[Event], next_id: int, now: float) -> list[Event]:
        self._next_id = next_id
        self.records = next_id - 1
        if self._fanouts or self._calls:
            events.extend(self._expire(now, horizon_ktime=_latest_ktime(events)))
        return events

    def _join(self, row: tuple, events: list[Event], now: float) -> None:
        """A record off the hot path: a call with fan-out, or one of its FANOUT records."""
        kind = row[_KIND]
        if kind == KIND_CALL:
            key = (row[_SENDER_TID], row[_CALL_ID])
            waiting = self._fanouts.get(key, [])
            if len(waiting) >= row[_NEMITTED]:
                self._fanouts.pop(key, None)
                events.extend(self._call_with_fanouts(row, waiting, now))
            else:
                self._calls[key] = row
        elif kind == KIND_FANOUT:
            key = (row[_SENDER_TID], row[_CALL_ID])
            self._fanouts.setdefault(key, []).append(row)
            call = self._calls.get(key)
            if call is not None and len(self._fanouts[key]) >= call[_NEMITTED]:
                del self._calls[key]
                events.extend(self._call_with_fanouts(call, self._fanouts.pop(key), now))
        elif kind == KIND_KERNEL:
            events.append(self._event(row, None, now))
        else:
            self.malformed += 1

    def decode_tuples(self, rows: Iterable[tuple]) -> list[Event]:
        """Decode records already unpacked with record.RECORD_STRUCT."""
        now = self._refresh_shapes()
        events: list[Event] = []
        for row in rows:
            if row[_KIND] == KIND_CALL and row[_NEMITTED] == 0:
                events.append(self._event(row, row[_RET], now))
            else:
                self._join(row, events, now)
        return self._finish_batch(events, self._next_id, now)

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

    def _comm(self, raw: bytes) -> str:
        # A storm comes from few tasks: decode each distinct comm once.
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            comm = self._comms[raw] = _comm(raw)
        return comm

    def _shape(self, key: tuple, row: tuple, ret: int | None, now: float) -> Shape:
        if len(self._shapes) > 4096:
            self._shapes.clear()
        shape = self._shapes[key] = Shape(self._decode_fields(row, ret, now))
        return shape

    def _event(self, row: tuple, ret: int | None, now: float) -> Event:
        """The Event of a record off the hot path (fan-out members, expired partners)."""
        key = (ret, row[3:])
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key, row, ret, now)
        event_id = self._next_id
        self._next_id = event_id + 1
        self.records = event_id
        ktime = row[0]
        return Event(event_id, ktime, ktime + self.wall_offset_ns, *shape.fields, shape)

    def _decode_fields(self, row: tuple, ret: int | None, now: float) -> tuple:
        """Every Event field after id, ktime_ns and time_ns."""
        (_ktime, _call_id, kind, _nemitted, _ret, arg_pid, arg_tid, via_code, sender_tgid,
         sender_tid, sender_uid, sig, arg_pidfd, _ngen, gen_code, _gen_errno, target_tid,
         gen_group, gen_result, _flags, kstack, sender_comm, target_comm) = row
        via = _VIA_NAMES[via_code] if via_code < len(_VIA_NAMES) else str(via_code)
        t_pid: int | None
        t_tid: int | None
        t_comm: str | None
        if gen_result != GEN_NONE:
            t_tid = target_tid
            t_comm = self._comm(target_comm)
            if via_code in _TG_VIAS:
                t_pid = arg_pid
            elif target_tid == sender_tid:
                t_pid = sender_tgid
            else:
                t_pid = self.resolver.tgid(target_tid, now)
                if t_pid is None and gen_group:
                    t_pid = target_tid  # the kernel signalled the process through this task
            outcome = OUTCOMES[gen_result] if 0 <= gen_result < len(OUTCOMES) else None
            code: int | None = gen_code
            group: bool | None = bool(gen_group)
        else:
            outcome = code = group = None
            resolver = self.resolver
            t_pid, t_tid = _target_from_args(via, arg_pid, arg_tid)
            if via == "pidfd_send_signal":
                t_pid = resolver.pidfd_pid(sender_tgid, arg_pidfd)
            elif via == "tkill" and t_tid is not None:
                t_pid = resolver.tgid(t_tid, now)
            t_comm = resolver.comm(t_pid, now) if t_pid is not None else None
        if kind == KIND_KERNEL:
            stack_origin = None
            if kstack > 0 and self.stacks is not None:
                stack_origin = self.stacks.origin(kstack - 1)
            return (sig, via, sender_tgid, sender_tid, self._comm(sender_comm), sender_uid,
                    t_pid, t_tid, t_comm, None, None, None, code, None, outcome, group,
                    stack_origin)
        # The arguments as the call's man page names them: tkill(tid, sig) takes a thread id
        # (the record keeps every call's first argument in arg_pid).
        e_pid: int | None = arg_pid
        e_tid: int | None = arg_tid if via_code in _TG_VIAS else None
        e_pidfd: int | None = None
        if via_code == _VIA_PIDFD:
            e_pid, e_pidfd = None, arg_pidfd
        elif via_code == _VIA_TKILL:
            e_pid, e_tid = None, arg_pid
        return (sig, via, sender_tgid, sender_tid, self._comm(sender_comm), sender_uid,
                t_pid, t_tid, t_comm, e_pid, e_tid, e_pidfd, code, ret, outcome, group, None)


_VIA_NAMES = rec.VIA_NAMES
_TG_VIAS = frozenset({rec.VIA_CODES["tgkill"], rec.VIA_CODES["rt_tgsigqueueinfo"]})
_VIA_PIDFD = rec.VIA_CODES["pidfd_send_signal"]
_VIA_TKILL = rec.VIA_CODES["tkill"]
KIND_KERNEL = rec.KIND_KERNEL
KIND_CALL = rec.KIND_CALL
KIND_FANOUT = rec.KIND_FANOUT
GEN_NONE = rec.GEN_NONE
_KIND = rec.FIELD_NAMES.index("kind")
_NEMITTED = rec.FIELD_NAMES.index("nemitted")
_RET = rec.FIELD_NAMES.index("ret")
_SENDER_TID = rec.FIELD_NAMES.index("sender_tid")
_CALL_ID = rec.FIELD_NAMES.index("call_id")
_IDX = {name: i for i, name in enumerate(rec.FIELD_NAMES)}


def _latest_ktime(events: list[Event]) -> int | None:
    return events[-1].ktime_ns if events else None


def _target_from_args(via: str, arg_pid: int, arg_tid: int) -> tuple[int | None, int | None]:
    """Target (pid, tid) of a call that generated nothing, from what it asked for."""
    if via in ("kill", "rt_sigqueueinfo"):
        return (arg_pid, None) if arg_pid > 0 else (None, None)
    if via == "tkill":
        return None, arg_pid if arg_pid > 0 else None
    if via in ("tgkill", "rt_tgsigqueueinfo"):
        return (arg_pid if arg_pid > 0 else None), (arg_tid if arg_tid > 0 else None)
    return None, None
