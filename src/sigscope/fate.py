"""What became of each generated signal: the user-space half of ``--fate``.

``FateTracker`` is fed the decoded signal Events and the fate records (programs/fate.py) and
produces one ``Fate`` per signal that was queued (outcome ``delivered`` or ``lose_info``);
signals the kernel coalesced (``already_pending``), could not queue (``overflow``) or ignored
at generation never get one, except a SIGCONT that resumed a stopped process, which did so even
though the kernel then dropped it as ignored: ``continued`` when the target's signal flags at
its generation (programs/fate_cont.py) carry the SIGNAL_CLD_* note prepare_signal() leaves on
resuming a stop, nothing when they carry none (it resumed nothing), ``unknown`` when the note
may be an earlier SIGCONT's that no thread has taken yet, or without that evidence.

Matching. A queued signal waits in a queue: the target thread's private queue for
tkill/tgkill/rt_tgsigqueueinfo and the process's shared queue for group signals. A delivery
(or consumption by sigwaitinfo) in thread T of process P takes from T's private queue first,
then P's shared queue, as the kernel's dequeue does. Standard signals coalesce, so at most one
of a kind waits per queue and the match is exact; real-time signals queue and are matched
first in, first out. Generation and delivery of one process's signals both happen under its
sighand lock and carry kernel timestamps, so processing everything in kernel-time order gives
the kernel's own order; the tracer hands over a *horizon* (a time before which every record has
been read) and the tracker holds newer items back until the horizon passes them.

Effects: ``handled`` (a handler ran), ``ignored`` (SIG_IGN, or a default action of ignoring),
``stopped``, ``continued``, ``terminated`` / ``core_dumped`` (decided at the process's exit from
the exit code; a fatal signal with the default action is converted by the kernel into SIGKILL on
every thread, so the cause is read from the exit code, never assumed), ``consumed``
(sigwaitinfo/sigtimedwait), ``flushed`` (dropped from its queue by a SIGCONT/stop signal or by a
handler set to ignore it), ``discarded`` (still queued when its thread or process exited),
``pending`` (still queued when tracing stopped) and ``unknown`` (no BTF to read exit codes, or it
left its queue without a trace event, e.g. read from a signalfd).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sigscope.model import record as rec
from sigscope.model.event import Event
from sigscope.model.signals import (  # noqa: F401 (CORE_SIGNALS: re-exported)
    CORE_SIGNALS,
    DEFAULT_IGNORE_SIGNALS,
    SIGCHLD,
    SIGCONT,
    SIGKILL,
    SIGSTOP,
    STOP_SIGNALS,
    signal_name,
)

EFFECTS = ("handled", "ignored", "stopped", "continued", "terminated", "core_dumped",
           "consumed", "flushed", "discarded", "pending", "unknown")
DISPOSITIONS = ("default", "ignore", "handler")

SIG_DFL, SIG_IGN = 0, 1
CLD_JOB_CONTROL = frozenset({5, 6})                    # CLD_STOPPED, CLD_CONTINUED
# include/linux/sched/signal.h: the parent notes prepare_signal(SIGCONT) leaves.
SIGNAL_CLD_MASK = 0x10 | 0x20                          # SIGNAL_CLD_STOPPED | _CONTINUED
# A queued signal is waiting in a queue only when the kernel queued it.
QUEUED_OUTCOMES = frozenset({"delivered", "lose_info"})

# sa_flags bits (include/uapi/asm-generic/signal-defs.h, x86's SA_RESTORER).
SA_FLAGS = (
    (0x00000001, "SA_NOCLDSTOP"),
    (0x00000002, "SA_NOCLDWAIT"),
    (0x00000004, "SA_SIGINFO"),
    (0x00000400, "SA_UNSUPPORTED"),
    (0x00000800, "SA_EXPOSE_TAGBITS"),
    (0x04000000, "SA_RESTORER"),
    (0x08000000, "SA_ONSTACK"),
    (0x10000000, "SA_RESTART"),
    (0x40000000, "SA_NODEFER"),
    (0x80000000, "SA_RESETHAND"),
)

MAX_PENDING = 65536
# SIGKILL deliveries of one group exit come within microseconds; an older marker belongs to
# a group exit that did not end the process (exec in a threaded process) and is replaced.
_DYING_MARKER_TTL_NS = 100_000_000


def flag_names(flags: int) -> list[str]:
    """sa_flags as names; bits without a name as one hex value."""
    names, rest = [], flags
    for bit, name in SA_FLAGS:
        if flags & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(f"{rest:#x}")
    return names


def disposition_of(handler: int) -> str:
    if handler == SIG_DFL:
        return "default"
    if handler == SIG_IGN:
        return "ignore"
    return "handler"


def default_effect(sig: int) -> str | None:
    """The effect of a signal's default action at delivery; None when it is fatal (terminated
    or core_dumped, known only at exit)."""
    if sig == SIGCONT:
        return "continued"
    if sig in DEFAULT_IGNORE_SIGNALS:
        return "ignored"
    if sig in STOP_SIGNALS:
        return "stopped"
    return None


def format_latency(ns: int | None) -> str:
    """850ns, 3.4us, 12us, 3.4ms, 120ms, 1.25s."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)):
        if ns >= scale:
            value = ns / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{ns}ns"


@dataclass(slots=True)
class FateRecord:
    """A fate-kind record (model/record.py), decoded."""

    kind: int
    ktime_ns: int
    pid: int
    tid: int
    comm: str
    sig: int
    code: int = 0
    handler: int = 0
    flags: int = 0
    exit_code: int | None = None
    group_dead: bool = False
    target_pid: int = 0  # KIND_SIGCONT: the process and thread the SIGCONT was generated for
    target_tid: int = 0
    group_unknown: bool = False  # KIND_EXIT without BTF or group_dead: group_dead means nothing

    @classmethod
    def from_row(cls, row: tuple) -> FateRecord:
        get = dict(zip(rec.FIELD_NAMES, row, strict=True)).__getitem__
        kind = get("kind")
        comm = get("sender_comm").split(b"\0", 1)[0].decode("utf-8", "replace")
        exit_code = None
        if kind == rec.KIND_EXIT and not get("flags") & rec.FLAG_EXIT_CODE_UNKNOWN:
            exit_code = get("ret") & 0xFFFFFFFF
        return cls(kind=kind, ktime_ns=get("ktime_ns"), pid=get("sender_tgid"),
                   tid=get("sender_tid"), comm=comm, sig=get("sig"), code=get("gen_code"),
                   handler=get("ret") & 0xFFFFFFFFFFFFFFFF, flags=get("arg_tid") & 0xFFFFFFFF,
                   exit_code=exit_code, group_dead=bool(get("gen_group")),
                   target_pid=get("arg_pid"), target_tid=get("target_tid"),
                   group_unknown=bool(get("flags") & rec.FLAG_GROUP_UNKNOWN))


@dataclass(slots=True)
class Fate:
    """What became of one signal (the Event with the same ``id``).

    ``pid``/``tid``/``comm`` is the thread that took it (delivery or consumption), or the one
    whose exit or sigaction decided it; for a ``pending`` signal, where it is pending (the
    process, and the thread for a thread-directed signal; ``tid`` None for a process's shared
    queue); ``latency_ns`` runs from generation to delivery or
    consumption (None when it was never dequeued). ``cause`` is the signal a process died of
    (effects terminated/core_dumped): for a converted fatal signal it is read from the exit
    code, so it is the signal sent, not the SIGKILL the kernel turned it into.
    """

    id: int
    event: Event = field(repr=False)
    ktime_ns: int
    time_ns: int
    effect: str
    pid: int | None = None
    tid: int | None = None
    comm: str | None = None
    latency_ns: int | None = None
    disposition: str | None = None
    handler: int | None = None
    flags: int | None = None
    cause: int | None = None
    exit_code: int | None = None

    @property
    def sig(self) -> int:
        return self.event.sig

    @property
    def signal(self) -> str:
        return self.event.signal

    @property
    def flag_names(self) -> list[str]:
        return flag_names(self.flags) if self.flags is not None else []

    @property
    def handler_text(self) -> str | None:
        return f"{self.handler:#x}" if self.disposition == "handler" and self.handler else None

    def iso_time(self) -> str:
        seconds, nanos = divmod(self.time_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{stamp}.{nanos // 1000:06d}Z"

    def summary(self) -> str:
        """The FATE column: effect, then the handler and its flags or the cause of death."""
        parts = [self.effect]
        if self.handler_text:
            parts.append(self.handler_text)
            if self.flag_names:
                parts.append("|".join(self.flag_names))
        if self.cause is not None and self.cause != self.sig:
            parts.append(f"({signal_name(self.cause)})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines follow-up record of a signal record with the same id."""
        return {
            "type": "fate",
            "id": self.id,
            "time": self.iso_time(),
            "ktime_ns": self.ktime_ns,
            "sig": self.sig,
            "signal": self.signal,
            "thread": {"pid": self.pid, "tid": self.tid, "comm": self.comm},
            "latency_ns": self.latency_ns,
            "disposition": self.disposition,
            "handler": self.handler_text,
            "flags": self.flag_names,
            "effect": self.effect,
            "cause": None if self.cause is None else {"sig": self.cause,
                                                      "signal": signal_name(self.cause)},
            "exit_code": self.exit_code,
        }


@dataclass(slots=True)
class _Delivered:
    """A signal delivered with a fatal default action, waiting for its thread's exit."""

    event: Event
    record: FateRecord


# A queue: ("thread", tid, sig) or ("process", tgid, sig).
_Key = tuple[str, int, int]


class FateTracker:
    """Joins signals with their deliveries, consumptions, flushes and exits. Bounded: at most
    ``max_pending`` queued signals are followed; signals beyond that are counted in
    ``untracked`` and get no fate."""

    def __init__(self, wall_offset_ns: int = 0, max_pending: int = MAX_PENDING) -> None:
        self.wall_offset_ns = wall_offset_ns
        self.max_pending = max_pending
        self._held: list[tuple[int, int, int, object]] = []  # heap: (ktime, order, seq, item)
        self._seq = itertools.count()
        self._queues: dict[_Key, deque[Event]] = {}
        self._queues_of_process: dict[int, set[_Key]] = {}
        self._owner: dict[_Key, int] = {}  # queue -> the process it belongs to
        self._npending = 0
        self._awaiting_exit: dict[int, list[_Delivered]] = {}  # tid -> fatal deliveries
        self._dying: dict[int, FateRecord] = {}  # tgid -> first SIGKILL delivery of a group exit
        # SIGCONT evidence (programs/fate_cont.py): set by the tracer when the raw
        # signal_generate program is attached; without it an ignored SIGCONT is "unknown".
        self.sigcont_states = False
        self._cont_waiting: dict[int, Event] = {}  # target tid -> ignored SIGCONT, undecided
        # tgid -> a SIGNAL_CLD_* note was seen set and nothing since shows it taken (a thread
        # of the process running get_signal(), which takes it before any delivery).
        self._cld_noted: dict[int, bool] = {}
        # Processes a thread of which exited when the kernel cannot say whether the group died
        # (FLAG_GROUP_UNKNOWN): their signals still queued at the end are unknown, not pending.
        self._maybe_dead: set[int] = set()
        self.untracked = 0   # queued signals not followed (table full)
        self.unmatched = 0   # deliveries/consumptions of signals we did not see generated

    # --- feeding ---------------------------------------------------------------------------

    def add_events(self, events: Iterable[Event]) -> None:
        for event in events:
            # Generation sorts before a fate record of the same instant.
            heapq.heappush(self._held, (event.ktime_ns, 0, next(self._seq), event))

    def add_records(self, records: Iterable[FateRecord]) -> None:
        for record in records:
            heapq.heappush(self._held, (record.ktime_ns, 1, next(self._seq), record))

    def advance(self, horizon_ns: int) -> list[Fate]:
        """Process everything older than the horizon, in kernel-time order."""
        fates: list[Fate] = []
        held = self._held
        while held and held[0][0] < horizon_ns:
            item = heapq.heappop(held)[3]
            if isinstance(item, Event):
                self._on_event(item, fates)
            else:
                self._on_record(item, fates)  # type: ignore[arg-type]
        return fates

    def finish(self, end_ktime_ns: int | None = None) -> list[Fate]:
        """At the end of tracing (kernel time `end_ktime_ns`): everything held, then every
        signal still queued is ``pending`` (``unknown`` when a thread of its process exited and
        the kernel could not say whether the process died) and a fatal delivery whose exit was
        not seen is ``unknown``."""
        fates = self.advance(1 << 64)
        for key, queue in self._queues.items():
            scope, owner, _sig = key
            effect = "unknown" if self._owner.get(key) in self._maybe_dead else "pending"
            for event in queue:
                fate = self._fate(event, None, effect)
                if effect == "pending":  # where: its process's shared queue, or a thread's own
                    fate.pid = event.target_pid if scope == "thread" else owner
                    fate.tid = owner if scope == "thread" else None
                    fate.comm = event.target_comm
                if end_ktime_ns is not None:
                    fate.ktime_ns = end_ktime_ns
                    fate.time_ns = end_ktime_ns + self.wall_offset_ns
                fates.append(fate)
        self._queues.clear()
        self._queues_of_process.clear()
        self._owner.clear()
        self._npending = 0
        for waiting in self._awaiting_exit.values():
            for d in waiting:
                fates.append(self._from_delivery(d.event, d.record, "unknown"))
        self._awaiting_exit.clear()
        for event in self._cont_waiting.values():  # its flags record never came (lost)
            fates.append(self._continued(event, "unknown"))
        self._cont_waiting.clear()
        return fates

    @property
    def pending(self) -> int:
        return self._npending

    @property
    def held(self) -> int:
        return len(self._held)

    # --- signals ---------------------------------------------------------------------------

    def _on_event(self, event: Event, fates: list[Fate]) -> None:
        if event.outcome is None:
            return  # nothing was generated
        process = event.target_pid if event.target_pid is not None else event.target_tid
        # prepare_signal(): a SIGCONT flushes queued stop signals, a stop signal flushes SIGCONT
        # (whatever becomes of the new signal itself).
        if process is not None:
            if event.sig == SIGCONT:
                self._flush(process, STOP_SIGNALS, None, fates)
            elif event.sig in STOP_SIGNALS:
                self._flush(process, frozenset({SIGCONT}), None, fates)
        if event.outcome in QUEUED_OUTCOMES:
            self._enqueue(event, process, fates)
        elif event.sig == SIGCONT and event.outcome == "ignored":
            # Ignored (default action or SIG_IGN), after it resumed the process if it was
            # stopped: its KIND_SIGCONT record (the target's job-control flags) decides.
            if not self.sigcont_states or event.target_tid is None:
                fates.append(self._continued(event, "unknown"))
            else:
                if len(self._cont_waiting) >= self.max_pending:
                    self._cont_waiting.clear()
                    self.untracked += 1
                self._cont_waiting[event.target_tid] = event
        if event.sig == SIGCHLD and event.via == "kernel" and event.code in CLD_JOB_CONTROL:
            # A thread of the sender's process took its CLD note (do_notify_parent_cldstop).
            self._cld_noted.pop(event.sender_pid, None)

    def _continued(self, event: Event, effect: str) -> Fate:
        """The fate of an ignored SIGCONT: what it did when it was generated, to its target."""
        fate = self._fate(event, None, effect)
        fate.pid, fate.tid, fate.comm = event.target_pid, event.target_tid, event.target_comm
        fate.latency_ns = 0 if effect == "continued" else None
        return fate

    def _on_sigcont_state(self, record: FateRecord, fates: list[Fate]) -> None:
        """A SIGCONT's generation seen with the target's signal flags (programs/fate_cont.py).
        The record comes right after the signal's own (same generation, same lock; the raw
        program is attached after the signal probes)."""
        noted = bool(record.flags & SIGNAL_CLD_MASK)
        earlier_note = self._cld_noted.get(record.target_pid, False)
        if noted:
            if len(self._cld_noted) >= self.max_pending:
                self._cld_noted.clear()
            self._cld_noted[record.target_pid] = True
        else:
            self._cld_noted.pop(record.target_pid, None)
        event = self._cont_waiting.pop(record.target_tid, None)
        if event is None:
            return
        if not noted:
            return  # nothing was stopped: it continued nothing (and was dropped as ignored)
        # A note set: this SIGCONT resumed a stop, unless the note is an earlier SIGCONT's
        # that no thread has taken yet; then the kernel does not say which.
        fates.append(self._continued(event, "unknown" if earlier_note else "continued"))

    def _enqueue(self, event: Event, process: int | None, fates: list[Fate]) -> None:
        if event.target_tid is None:
            return
        if self._npending >= self.max_pending:
            self.untracked += 1
            return
        key: _Key = (("process", process, event.sig) if event.group and process is not None
                     else ("thread", event.target_tid, event.sig))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            owner = process if process is not None else event.target_tid
            self._queues_of_process.setdefault(owner, set()).add(key)
            self._owner[key] = owner
        elif event.sig < 32 and queue:
            # A standard signal is queued once per queue: the one waiting left without a trace
            # event (a signalfd read, a flush we could not see).
            self._npending -= 1
            fates.append(self._fate(queue.popleft(), None, "unknown"))
        queue.append(event)
        self._npending += 1

    # --- fate records ----------------------------------------------------------------------

    def _on_record(self, record: FateRecord, fates: list[Fate]) -> None:
        kind = record.kind
        if kind == rec.KIND_DELIVER:
            self._on_deliver(record, fates)
        elif kind == rec.KIND_CONSUMED:
            event = self._dequeue(record)
            if event is None:
                self.unmatched += 1
            else:
                fates.append(self._from_delivery(event, record, "consumed", disposition=False))
        elif kind == rec.KIND_EXIT:
            self._on_exit(record, fates)
        elif kind == rec.KIND_SIGCONT:
            self._on_sigcont_state(record, fates)
        elif kind == rec.KIND_SIGACTION:
            ignored = record.handler == SIG_IGN or (
                record.handler == SIG_DFL and record.sig in DEFAULT_IGNORE_SIGNALS | {SIGCONT})
            if ignored and record.sig not in (SIGKILL, SIGSTOP):  # those cannot be changed
                self._flush(record.pid, frozenset({record.sig}), record, fates)

    def _dequeue(self, record: FateRecord) -> Event | None:
        """The signal a thread dequeues: its private queue first, then its process's."""
        for key in (("thread", record.tid, record.sig), ("process", record.pid, record.sig)):
            queue = self._queues.get(key)
            if queue:
                event = queue.popleft()
                self._npending -= 1
                if not queue:
                    self._drop_queue(key)
                return event
        return None

    def _drop_queue(self, key: _Key) -> None:
        del self._queues[key]
        owner = self._owner.pop(key)
        keys = self._queues_of_process[owner]
        keys.discard(key)
        if not keys:
            del self._queues_of_process[owner]

    def _on_deliver(self, record: FateRecord, fates: list[Fate]) -> None:
        # get_signal() takes the process's CLD note before it dequeues anything.
        self._cld_noted.pop(record.pid, None)
        event = self._dequeue(record)
        if event is None:
            if record.sig == SIGKILL:
                # A group exit (a converted fatal signal, a core dump, exit_group, exec) makes
                # every thread take SIGKILL: remember when this process began dying.
                marker = self._dying.get(record.pid)
                if marker is None or record.ktime_ns - marker.ktime_ns > _DYING_MARKER_TTL_NS:
                    if len(self._dying) >= self.max_pending:
                        self._dying.clear()  # only a latency and a thread name are at stake
                    self._dying[record.pid] = record
            else:
                self.unmatched += 1
            return
        disposition = disposition_of(record.handler)
        if disposition == "ignore":
            effect: str | None = "ignored"
        elif disposition == "handler":
            effect = "handled"
        else:
            effect = default_effect(record.sig)
        if effect is None:
            if len(self._awaiting_exit) >= self.max_pending:
                self.untracked += 1
                fates.append(self._from_delivery(event, record, "unknown"))
                return
            self._awaiting_exit.setdefault(record.tid, []).append(_Delivered(event, record))
        else:
            fates.append(self._from_delivery(event, record, effect))

    def _on_exit(self, record: FateRecord, fates: list[Fate]) -> None:
        exit_code = record.exit_code
        if record.group_unknown:
            if len(self._maybe_dead) >= self.max_pending:
                self._maybe_dead.clear()  # only "unknown" instead of "pending" is at stake
            self._maybe_dead.add(record.pid)
        for d in self._awaiting_exit.pop(record.tid, ()):
            fates.append(self._death(d.event, d.record, exit_code))
        signo = exit_code & 0x7F if exit_code is not None else 0
        if signo:
            converted = self._oldest_queued(record.pid, signo)
            if converted is not None:
                marker = self._dying.get(record.pid)
                if marker is None or marker.ktime_ns < converted.ktime_ns:
                    marker = record
                fates.append(self._death(converted, marker, exit_code))
        if record.group_dead:
            threads = [tid for tid, waiting in self._awaiting_exit.items()
                       if waiting[0].record.pid == record.pid]
            for tid in threads:
                for d in self._awaiting_exit.pop(tid):
                    fates.append(self._death(d.event, d.record, exit_code))
            for key in list(self._queues_of_process.get(record.pid, ())):
                self._owner.pop(key, None)
                for event in self._queues.pop(key, ()):
                    self._npending -= 1
                    fate = self._fate(event, record, "discarded" if exit_code is not None
                                      else "unknown")
                    fate.exit_code = exit_code
                    fates.append(fate)
            self._queues_of_process.pop(record.pid, None)
            self._dying.pop(record.pid, None)
            self._cld_noted.pop(record.pid, None)

    def _oldest_queued(self, process: int, sig: int) -> Event | None:
        """Remove and return the oldest queued `sig` of a process (any of its queues)."""
        best: tuple[int, _Key] | None = None
        for key in self._queues_of_process.get(process, ()):
            if key[2] == sig:
                queue = self._queues[key]
                if best is None or queue[0].ktime_ns < best[0]:
                    best = (queue[0].ktime_ns, key)
        if best is None:
            return None
        queue = self._queues[best[1]]
        event = queue.popleft()
        self._npending -= 1
        if not queue:
            self._drop_queue(best[1])
        return event

    def _flush(
        self, process: int, signals: frozenset[int], record: FateRecord | None, fates: list[Fate]
    ) -> None:
        for key in [k for k in self._queues_of_process.get(process, ()) if k[2] in signals]:
            for event in self._queues[key]:
                self._npending -= 1
                fates.append(self._fate(event, record, "flushed"))
            self._drop_queue(key)

    # --- building fates --------------------------------------------------------------------

    def _fate(self, event: Event, record: FateRecord | None, effect: str) -> Fate:
        """A fate at the record's time and thread (or now, at the end, without a record)."""
        ktime = record.ktime_ns if record is not None else event.ktime_ns
        fate = Fate(id=event.id, event=event, ktime_ns=ktime, time_ns=ktime + self.wall_offset_ns,
                    effect=effect)
        if record is not None:
            fate.pid, fate.tid, fate.comm = record.pid, record.tid, record.comm
        event.fate = fate
        return fate

    def _from_delivery(
        self, event: Event, record: FateRecord, effect: str, disposition: bool = True
    ) -> Fate:
        fate = self._fate(event, record, effect)
        fate.latency_ns = record.ktime_ns - event.ktime_ns
        if disposition:
            fate.disposition = disposition_of(record.handler)
            fate.handler = record.handler
            fate.flags = record.flags
        return fate

    def _death(self, event: Event, delivery: FateRecord, exit_code: int | None) -> Fate:
        """A signal whose delivery (or group exit) ended the process, with the exit code."""
        if exit_code is None:
            effect = "unknown"
        elif exit_code & 0x7F:
            effect = "core_dumped" if exit_code & 0x80 else "terminated"
        else:
            effect = "unknown"  # the thread exited normally: another exit won the race
        fate = self._from_delivery(event, delivery, effect)
        if delivery.kind != rec.KIND_DELIVER or delivery.sig != event.sig:
            # Converted fatal signal: the SIGKILL's disposition says nothing; the signal's own
            # action was the default one (else it would not have been converted).
            fate.disposition, fate.handler, fate.flags = "default", SIG_DFL, None
            if delivery.kind == rec.KIND_EXIT:
                fate.latency_ns = None
        if exit_code is not None and exit_code & 0x7F:
            fate.cause = exit_code & 0x7F
        fate.exit_code = exit_code
        return fate
