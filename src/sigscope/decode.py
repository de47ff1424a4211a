"""Records from the kernel -> Events.

Joins each FANOUT record (a further recipient of kill(-pgid)/kill(-1)) with the CALL record of
its syscall, which carries the return value, and fills target process ids and names that the
kernel did not report from /proc (cached briefly: a storm at one target must not cost a /proc
read per record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from sigscope.model import record as rec
from sigscope.model.event import Contexts, Event, Runs, Shape
from sigscope.model.signals import OUTCOMES

# A FANOUT record whose CALL has not arrived after this long is reported without a return value
# (its CALL record was lost; the loss is counted).
FANOUT_WAIT_NS = 2_000_000_000
_PROC_CACHE_TTL_S = 1.0


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


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


# A record unpacked with record.RECORD_STRUCT: the fields in record.FIELD_NAMES order.
Row = tuple[Any, ...]


class Decoder:
    """Turns batches of fixed-size records into Events, in order, each signal exactly once.

    ``runs(batch)`` is the one hot loop: consecutive equal records (equal but for their time
    fields) come out as one ``Run`` of their shared Shape, so a storm is unpacked and decoded
    once and outputs render it from one template (outputs/trace.py). ``decode(batch)`` is the
    same as Events. Counters: ``records`` (Events handed out), ``malformed`` (batches with a
    partial record, records of an unknown kind)."""

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
        # cgroup id -> container context for Event.sender_container/target_container (the
        # Tracer sets a sigscope.containers.ContainerLookup; None: not looked up).
        self.contexts: Contexts | None = None
        if wall_offset_ns is None:
            wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.wall_offset_ns = wall_offset_ns
        self._monotonic = monotonic
        self._next_id = 1
        # (sender_tid, call_id) -> FANOUT rows waiting for their CALL, and CALLs waiting for
        # FANOUT records that a perf buffer delivered from another CPU's ring.
        self._fanouts: dict[tuple[int, int], list[Row]] = {}
        self._calls: dict[tuple[int, int], Row] = {}
        self.records = 0
        self.malformed = 0
        self._comms: dict[bytes, str] = {}
        # Hot-path shapes keyed on the record's bytes after the time fields (per kind: the kind
        # is not in those bytes); off-path shapes on (return value, fields after nemitted).
        self._shapes: dict[bytes, Shape] = {}
        self._kernel_shapes: dict[bytes, Shape] = {}
        self._row_shapes: dict[tuple[int | None, Row], Shape] = {}
        self._shapes_expire = 0.0

    def runs(self, batch: bytes) -> Runs:
        """Decode a batch of concatenated records into Runs (model/event.py), in record order:
        consecutive equal records (a call with at most one recipient, or a kernel signal,
        repeated) share one Shape; a record off that path (a call with fan-out and its FANOUT
        records, partners that waited too long) is an Event."""
        batch = self._whole_records(batch)
        now = self._refresh_shapes()
        out = Runs(self._next_id, self.wall_offset_ns)
        add_item, add_length, ktimes = out.items.append, out.lengths.append, out.ktimes
        add_ktime = ktimes.append
        call_shapes, kernel_shapes = self._shapes, self._kernel_shapes
        unpack_rest = rec.REST_STRUCT.unpack
        records = 0  # records before the current run (Events included)
        run_start = 0  # index in ktimes where the current run starts
        last_rest: bytes | None = None
        last_kind = -1
        for ktime, call_id, kind, nemitted, rest in rec.HOT_STRUCT.iter_unpack(batch):
            if nemitted == 0 and (kind == KIND_CALL or kind == KIND_KERNEL):
                # A storm repeats the previous record: comparing bytes beats hashing them.
                if rest == last_rest and kind == last_kind:
                    add_ktime(ktime)
                    continue
                if last_rest is not None:
                    count = len(ktimes) - run_start
                    add_length(count)
                    records += count
                shape = (call_shapes if kind == KIND_CALL else kernel_shapes).get(rest)
                if shape is None:
                    shape = self._hot_shape(kind, rest, now)
                add_item(shape)
                run_start = len(ktimes)
                add_ktime(ktime)
                last_rest, last_kind = rest, kind
                continue
            if last_rest is not None:
                count = len(ktimes) - run_start
                add_length(count)
                records += count
                last_rest = None
            self._next_id = out.first_id + records
            joined: list[Event] = []
            self._join((ktime, call_id, kind, nemitted, *unpack_rest(rest)), joined, now)
            for event in joined:
                add_item(event)
                add_length(0)
            records += len(joined)
        if last_rest is not None:
            count = len(ktimes) - run_start
            add_length(count)
            records += count
        self._next_id = out.first_id + records
        self.records = self._next_id - 1
        if self._fanouts or self._calls:
            latest = ktimes[-1] if ktimes else None
            if out.items and isinstance(out.items[-1], Event):
                latest = out.items[-1].ktime_ns
            for event in self._expire(now, horizon_ktime=latest):
                add_item(event)
                add_length(0)
        return out

    def decode(self, batch: bytes) -> list[Event]:
        """Decode a batch of concatenated records into Events (runs(), one Event per record)."""
        return self.runs(batch).events()

    def decode_with_fates(self, batch: bytes) -> tuple[list[Event], list[Row]]:
        """--fate: the Events of a batch's signal records, and its fate records (kinds in
        record.FATE_KINDS) as unpacked rows, for the fate tracker."""
        batch = self._whole_records(batch)
        now = self._refresh_shapes()
        fate_kinds = rec.FATE_KINDS
        events: list[Event] = []
        fate_rows: list[Row] = []
        for row in rec.RECORD_STRUCT.iter_unpack(batch):
            if row[_KIND] in fate_kinds:
                fate_rows.append(row)
            elif row[_KIND] == KIND_CALL and row[_NEMITTED] == 0:
                events.append(self._event(row, row[_RET], now))
            else:
                self._join(row, events, now)
        self.records = self._next_id - 1
        if self._fanouts or self._calls:
            events.extend(self._expire(now, horizon_ktime=_latest_ktime(events)))
        return events, fate_rows

    def oldest_waiting_ktime(self) -> int | None:
        """Kernel time (ns) of the oldest record held back (a CALL or FANOUT waiting for its
        partner), whose Events are not out yet; None when nothing waits."""
        held = [row[_KTIME] for rows in self._fanouts.values() for row in rows]
        held += [row[_KTIME] for row in self._calls.values()]
        return min(held) if held else None

    def flush(self) -> list[Event]:
        """At the end of tracing: whatever still waits for a partner record."""
        return self._expire(self._monotonic(), None, everything=True)

    # --- internals -----------------------------------------------------------------------

    def _whole_records(self, batch: bytes) -> bytes:
        if len(batch) % rec.RECORD_SIZE:
            self.malformed += 1
            batch = batch[: len(batch) - len(batch) % rec.RECORD_SIZE]
        return batch

    def _hot_shape(self, kind: int, rest: bytes, now: float) -> Shape:
        """Decode a hot-path record (a call with at most one recipient, or a kernel signal)
        seen for the first time, and remember its shape under its bytes."""
        shapes = self._shapes if kind == KIND_CALL else self._kernel_shapes
        if len(shapes) > 4096:
            shapes.clear()
        row = (0, 0, kind, 0, *rec.REST_STRUCT.unpack(rest))
        ret = row[_RET] if kind == KIND_CALL else None
        shape = shapes[rest] = self._decode_shape(row, ret, now)
        return shape

    def _refresh_shapes(self) -> float:
        now = self._monotonic()
        if now >= self._shapes_expire:
            # Refresh what /proc told us about targets at least once a second.
            self._shapes.clear()
            self._kernel_shapes.clear()
            self._row_shapes.clear()
            self._shapes_expire = now + 1.0
        return now

    def _join(self, row: Row, events: list[Event], now: float) -> None:
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

    def _call_with_fanouts(self, call: Row, fanouts: list[Row], now: float) -> list[Event]:
        ret = call[_RET]
        fanouts.sort(key=lambda row: row[_NGEN])
        return [self._event(call, ret, now)] + [self._event(f, ret, now) for f in fanouts]

    def _expire(self, now: float, horizon_ktime: int | None, everything: bool = False
                ) -> list[Event]:
        """Report FANOUTs whose CALL never came (lost), and CALLs missing FANOUTs (lost)."""
        out: list[Event] = []
        if horizon_ktime is None:
            if not everything:
                return out
            horizon_ktime = 0
        for key in list(self._fanouts):
            rows = self._fanouts[key]
            if everything or horizon_ktime - rows[0][_KTIME] > FANOUT_WAIT_NS:
                del self._fanouts[key]
                call = self._calls.pop(key, None)
                if call is not None:
                    out.extend(self._call_with_fanouts(call, rows, now))
                else:
                    out.extend(self._event(row, None, now) for row in rows)
        for key in list(self._calls):
            call = self._calls[key]
            if everything or horizon_ktime - call[_KTIME] > FANOUT_WAIT_NS:
                del self._calls[key]
                out.append(self._event(call, call[_RET], now))
        self.records = self._next_id - 1
        return out

    def _comm(self, raw: bytes) -> str:
        # A storm comes from few tasks: decode each distinct comm once.
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            comm = self._comms[raw] = _comm(raw)
        return comm

    def _event(self, row: Row, ret: int | None, now: float) -> Event:
        """The Event of a record off the hot path (fan-out members, expired partners)."""
        key = (ret, row[3:])
        shape = self._row_shapes.get(key)
        if shape is None:
            if len(self._row_shapes) > 4096:
                self._row_shapes.clear()
            shape = self._row_shapes[key] = self._decode_shape(row, ret, now)
        event_id = self._next_id
        self._next_id = event_id + 1
        ktime = row[_KTIME]
        return Event(event_id, ktime, ktime + self.wall_offset_ns, shape)

    def _decode_shape(self, row: Row, ret: int | None, now: float) -> Shape:
        """Every Event field but id and times, from a record and its call's return value."""
        (_ktime, _call_id, kind, _nemitted, _ret, arg_pid, arg_tid, via_code, sender_tgid,
         sender_tid, sender_uid, sig, arg_pidfd, _ngen, gen_code, _gen_errno, target_tid,
         gen_group, gen_result, flags, kstack, target_tgid, _target_src, sender_comm,
         target_comm, target_cgroup, sender_cgroup, sender_ns_tgid, sender_ns_tid,
         target_ns_tgid, target_ns_tid) = row
        via = _VIA_NAMES[via_code] if via_code < len(_VIA_NAMES) else str(via_code)
        t_pid: int | None
        t_tid: int | None
        t_comm: str | None
        outcome: str | None = None
        code: int | None = None
        group: bool | None = None
        generated = gen_result != GEN_NONE
        source: str | None = "kernel"
        if generated:
            t_tid = target_tid
            t_comm = self._comm(target_comm)
            if target_tgid:
                t_pid = target_tgid  # read from the recipient's task at generation (tp_btf)
            elif via_code in _TG_VIAS:
                t_pid, source = arg_pid, "args"
            elif target_tid == sender_tid:
                t_pid = sender_tgid
            else:
                # Tracefs path (no BTF): the tracepoint has no tgid. /proc now, best effort:
                # a thread already gone gives None (or the tid itself for a group signal).
                t_pid, source = self.resolver.tgid(target_tid, now), "proc"
                if t_pid is None and gen_group:
                    # the kernel signalled the process through this task
                    t_pid, source = target_tid, "tid"
            outcome = OUTCOMES[gen_result] if 0 <= gen_result < len(OUTCOMES) else None
            code = gen_code
            group = bool(gen_group)
        elif flags & rec.FLAG_SENDER_NESTED_PIDNS:
            # Nothing generated, and the arguments are numbers of the sender's own pid
            # namespace: no host process or thread is known to be meant.
            t_pid = t_tid = None
            t_comm = None
        else:
            resolver = self.resolver
            t_pid, t_tid = _target_from_args(via, arg_pid, arg_tid)
            source = "args"
            if via_code == _VIA_PIDFD:
                t_pid, source = resolver.pidfd_pid(sender_tgid, arg_pidfd), "proc"
            elif via_code == _VIA_TKILL and t_tid is not None:
                t_pid, source = resolver.tgid(t_tid, now), "proc"
            t_comm = resolver.comm(t_pid, now) if t_pid is not None else None
        kernel = kind == KIND_KERNEL
        pidfd_call = via_code == _VIA_PIDFD
        stack_origin = None
        if kernel and kstack > 0 and self.stacks is not None:
            stack_origin = self.stacks.origin(kstack - 1)
        # The arguments as the call's man page names them: tkill(tid, sig) takes a thread id
        # (the record keeps every call's first argument in arg_pid).
        tkill_call = via_code == _VIA_TKILL
        shape = Shape(
            sig=sig, via=via, sender_pid=sender_tgid, sender_tid=sender_tid,
            sender_comm=self._comm(sender_comm), sender_uid=sender_uid, target_pid=t_pid,
            target_tid=t_tid, target_comm=t_comm,
            arg_pid=None if kernel or pidfd_call or tkill_call else arg_pid,
            arg_tid=(arg_pid if tkill_call else arg_tid if via_code in _TG_VIAS else None)
            if not kernel else None,
            arg_pidfd=arg_pidfd if not kernel and pidfd_call else None,
            code=code, result=None if kernel else ret, outcome=outcome, group=group,
            stack_origin=stack_origin,
            target_cgroup=target_cgroup if generated and target_cgroup else None,
            sender_cgroup=sender_cgroup or None, sender_ns_pid=sender_ns_tgid or None,
            sender_ns_tid=sender_ns_tid or None,
            target_ns_pid=target_ns_tgid if generated and target_ns_tgid else None,
            target_ns_tid=target_ns_tid if generated and target_ns_tid else None,
            target_source=source if t_pid is not None else None)
        shape.contexts = self.contexts
        return shape


_VIA_NAMES = rec.VIA_NAMES
_TG_VIAS = frozenset(rec.VIA_CODES[via] for via in rec.TGID_VIAS)
_VIA_PIDFD = rec.VIA_CODES["pidfd_send_signal"]
_VIA_TKILL = rec.VIA_CODES["tkill"]
KIND_KERNEL = rec.KIND_KERNEL
KIND_CALL = rec.KIND_CALL
KIND_FANOUT = rec.KIND_FANOUT
GEN_NONE = rec.GEN_NONE
_KTIME = rec.FIELD_NAMES.index("ktime_ns")
_KIND = rec.FIELD_NAMES.index("kind")
_NEMITTED = rec.FIELD_NAMES.index("nemitted")
_RET = rec.FIELD_NAMES.index("ret")
_NGEN = rec.FIELD_NAMES.index("ngen")
_SENDER_TID = rec.FIELD_NAMES.index("sender_tid")
_CALL_ID = rec.FIELD_NAMES.index("call_id")


def _latest_ktime(events: list[Event]) -> int | None:
    return events[-1].ktime_ns if events else None


def _target_from_args(via: str, arg_pid: int, arg_tid: int) -> tuple[int | None, int | None]:
    """Target (pid, tid) of a call that generated nothing, from what it asked for."""
    if via in ("kill", "rt_sigqueueinfo"):
        return (arg_pid, None) if arg_pid > 0 else (None, None)
    if via == "tkill":
        return None, arg_pid if arg_pid > 0 else None
    if via in rec.TGID_VIAS:
        return (arg_pid if arg_pid > 0 else None), (arg_tid if arg_tid > 0 else None)
    return None, None
