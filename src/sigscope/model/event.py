"""The tool's model: one Event per send attempt and recipient."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sigscope.model.origins import ORIGINS  # noqa: F401 (re-exported)
from sigscope.model.signals import (
    OUTCOMES,
    SI_KERNEL,
    SI_TIMER,
    SI_USER,
    SIGNALS,
    SYS_SECCOMP,
    code_name,
    errno_name,
    outcome_name,
    signal_name,
)

# cgroup id -> the container context dict (sigscope.containers.describe), or None: unknown.
Contexts = Callable[[int], "dict[str, object] | None"]

__all__ = ["ORIGINS", "OUTCOMES", "Event", "Runs", "Shape", "kernel_origin", "outcome_name"]

# Where a kernel-generated signal came from (via == "kernel").


def _numbers(*names: str) -> frozenset[int]:
    return frozenset(SIGNALS[name] for name in names)


_FAULT_SIGNALS = _numbers("SIGILL", "SIGTRAP", "SIGBUS", "SIGFPE", "SIGSEGV")
_TIMER_SIGNALS = _numbers("SIGALRM", "SIGVTALRM", "SIGPROF")
_TTY_SIGNALS = _numbers("SIGHUP", "SIGINT", "SIGQUIT", "SIGTSTP", "SIGTTIN", "SIGTTOU",
                        "SIGWINCH", "SIGCONT")
_IO_SIGNALS = _numbers("SIGIO", "SIGURG")
_RLIMIT_SIGNALS = _numbers("SIGXCPU", "SIGXFSZ")
_SIGCHLD, _SIGSYS, _SIGPIPE, _SIGKILL = (
    SIGNALS["SIGCHLD"], SIGNALS["SIGSYS"], SIGNALS["SIGPIPE"], SIGNALS["SIGKILL"])


def kernel_origin(sig: int, code: int, stack_origin: str | None = None) -> str:
    """Why the kernel generated a signal (one of ORIGINS, defined in model/origins.py), from
    the signal, its si_code and, for a SIGKILL, the origin its kernel stack names
    (``stack_origin``; None: no stack, or a path that names none)."""
    if code == SI_TIMER or (sig in _TIMER_SIGNALS and code in (SI_KERNEL, SI_USER)):
        return "timer"
    if sig == _SIGKILL:
        return stack_origin if stack_origin is not None else "other"
    if sig == _SIGCHLD:
        return "child"
    if sig in _FAULT_SIGNALS and (code > 0 or code == SI_KERNEL):
        return "fault"
    if sig == _SIGSYS and code == SYS_SECCOMP:
        return "seccomp"
    if sig == _SIGPIPE:
        return "pipe"
    if sig in _RLIMIT_SIGNALS:
        return "rlimit"
    # Positive codes below SI_KERNEL are POLL_* reasons (F_SETSIG); SI_KERNEL itself is not.
    if sig in _IO_SIGNALS or (0 < code < SI_KERNEL and sig not in _FAULT_SIGNALS):
        return "io"
    if sig in _TTY_SIGNALS and code == SI_KERNEL:
        return "tty"
    return "other"


# The fields of a Shape: what a run of Events has in common, everything but id and times.
SHAPE_FIELDS = (
    "sig", "via", "sender_pid", "sender_tid", "sender_comm", "sender_uid", "target_pid",
    "target_tid", "target_comm", "arg_pid", "arg_tid", "arg_pidfd", "code", "result", "outcome",
    "group", "stack_origin", "target_cgroup", "sender_cgroup", "sender_ns_pid", "sender_ns_tid",
    "target_ns_pid", "target_ns_tid", "target_source",
)
# Where a target pid came from (Event.target_source): read by the kernel at the event, the
# call's own argument, looked up in /proc after the event (best effort), or the recipient
# thread's id standing in for its process (a group signal whose thread had left /proc).
TARGET_SOURCES = ("kernel", "args", "proc", "tid")
# The fields that make an Event's value.
VALUE_FIELDS = ("id", "ktime_ns", "time_ns", *SHAPE_FIELDS)


class Shape:
    """What a run of Events has in common: every field but id and times, by name (the
    Decoder builds one per distinct record and shares it between the Events of equal records).

    Field meanings are those of the Event properties of the same names. Outputs may keep what
    they rendered for a shape in ``rendered``, keyed by output name (a template str).
    ``contexts`` (not part of the value) turns a cgroup id into its container context
    (``sigscope.containers.ContainerLookup``; None: not looked up)."""

    __slots__ = (*SHAPE_FIELDS, "rendered", "contexts")

    def __init__(
        self,
        *,
        sig: int,
        via: str,
        sender_pid: int,
        sender_tid: int,
        sender_comm: str,
        sender_uid: int,
        target_pid: int | None,
        target_tid: int | None,
        target_comm: str | None,
        arg_pid: int | None,
        arg_tid: int | None,
        arg_pidfd: int | None,
        code: int | None,
        result: int | None,
        outcome: str | None,
        group: bool | None = None,
        stack_origin: str | None = None,
        target_cgroup: int | None = None,
        sender_cgroup: int | None = None,
        sender_ns_pid: int | None = None,
        sender_ns_tid: int | None = None,
        target_ns_pid: int | None = None,
        target_ns_tid: int | None = None,
        target_source: str | None = None,
    ) -> None:
        self.sig = sig
        self.via = via
        self.sender_pid = sender_pid
        self.sender_tid = sender_tid
        self.sender_comm = sender_comm
        self.sender_uid = sender_uid
        self.target_pid = target_pid
        self.target_tid = target_tid
        self.target_comm = target_comm
        self.arg_pid = arg_pid
        self.arg_tid = arg_tid
        self.arg_pidfd = arg_pidfd
        self.code = code
        self.result = result
        self.outcome = outcome
        self.group = group
        self.stack_origin = stack_origin
        self.target_cgroup = target_cgroup
        self.sender_cgroup = sender_cgroup
        self.sender_ns_pid = sender_ns_pid
        self.sender_ns_tid = sender_ns_tid
        self.target_ns_pid = target_ns_pid
        self.target_ns_tid = target_ns_tid
        self.target_source = target_source
        self.rendered: dict[str, str] = {}
        self.contexts: Contexts | None = None

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in SHAPE_FIELDS)


class Event:
    """One signal send attempt and recipient: a Shape (what it shares with equal records) plus
    an id and its times.

    Times: ``ktime_ns`` is CLOCK_MONOTONIC as the kernel took it; ``time_ns`` the same instant
    on the wall clock (UTC), both in ns. Target fields are None when neither the kernel nor
    /proc could tell. ``result``/``error`` are the syscall's return and errno name (None for
    via == "kernel"); ``outcome`` is what the kernel did with the signal (one of OUTCOMES; None
    when nothing was generated); ``group`` whether the kernel queued it for the whole process
    (None when nothing was generated).

    ``shape`` is shared with events that differ only in id and time (built by the decoder), so
    outputs can reuse what they rendered for the previous one; ``fate`` is, with --fate, the
    Fate (sigscope.fate) of this signal once known (the tracer also yields it after this Event).
    Neither is part of the event's value. (A plain class with slots rather than a dataclass:
    one is built per record, and `dataclasses` costs start-up time.) ``Event.of(...)`` builds
    one from field values.
    """

    __slots__ = ("id", "ktime_ns", "time_ns", "shape", "fate")

    def __init__(self, id: int, ktime_ns: int, time_ns: int, shape: Shape) -> None:
        self.id = id
        self.ktime_ns = ktime_ns
        self.time_ns = time_ns
        self.shape = shape
        self.fate: Any = None

    @classmethod
    def of(
        cls,
        id: int,
        ktime_ns: int,
        time_ns: int,
        *,
        sig: int,
        via: str,
        sender_pid: int,
        sender_tid: int,
        sender_comm: str,
        sender_uid: int,
        target_pid: int | None,
        target_tid: int | None,
        target_comm: str | None,
        arg_pid: int | None,
        arg_tid: int | None,
        arg_pidfd: int | None,
        code: int | None,
        result: int | None,
        outcome: str | None,
        group: bool | None = None,
        stack_origin: str | None = None,
        target_cgroup: int | None = None,
        sender_cgroup: int | None = None,
        sender_ns_pid: int | None = None,
        sender_ns_tid: int | None = None,
        target_ns_pid: int | None = None,
        target_ns_tid: int | None = None,
        contexts: Contexts | None = None,
        target_source: str | None = None,
    ) -> Event:
        """An Event from field values (a Shape of its own); ``contexts``: see Shape."""
        shape = Shape(
            sig=sig, via=via, sender_pid=sender_pid, sender_tid=sender_tid,
            sender_comm=sender_comm, sender_uid=sender_uid, target_pid=target_pid,
            target_tid=target_tid, target_comm=target_comm, arg_pid=arg_pid, arg_tid=arg_tid,
            arg_pidfd=arg_pidfd, code=code, result=result, outcome=outcome, group=group,
            stack_origin=stack_origin, target_cgroup=target_cgroup, sender_cgroup=sender_cgroup,
            sender_ns_pid=sender_ns_pid, sender_ns_tid=sender_ns_tid,
            target_ns_pid=target_ns_pid, target_ns_tid=target_ns_tid,
            target_source=target_source)
        shape.contexts = contexts
        return cls(id, ktime_ns, time_ns, shape)

    @property
    def sig(self) -> int:
        return self.shape.sig

    @property
    def target_cgroup(self) -> int | None:
        """The cgroup v2 id (the kernfs node id of the recipient's default-hierarchy cgroup,
        task->cgroups->dfl_cgrp->kn->id, as in /proc/<pid>/cgroup's directory inode) read at
        generation by the tp_btf program; None without it or when nothing was generated."""
        return self.shape.target_cgroup

    @property
    def sender_cgroup(self) -> int | None:
        """The sender's cgroup v2 id (bpf_get_current_cgroup_id() at the event, the same
        kernfs id as ``target_cgroup``); None when the kernel program did not read it."""
        return self.shape.sender_cgroup

    @property
    def sender_container(self) -> dict[str, object] | None:
        """The sender's container context, resolved in user space from ``sender_cgroup`` (the
        id the kernel read at the event) when the Event is read: a dict of
        ``sigscope.containers.describe()`` (``cgroup_id``, ``cgroup_path``, ``runtime``,
        ``container_id``, ``monitor_of``, ``pod_uid``, ``qos``, ``unit``, ``container_name``,
        ``pod_name``, ``pod_namespace``; docs/CONTAINERS.md), shared (do not change it). None
        when the id is unknown (0), no source resolves it, or the Event was read without a
        lookup (``Tracer(containers=False)``, a cgroup v1-only host)."""
        contexts = self.shape.contexts
        cgroup = self.shape.sender_cgroup
        return None if contexts is None or not cgroup else contexts(cgroup)

    @property
    def target_container(self) -> dict[str, object] | None:
        """The recipient's container context, from ``target_cgroup`` as ``sender_container``
        from ``sender_cgroup``; None also when nothing was generated."""
        contexts = self.shape.contexts
        cgroup = self.shape.target_cgroup
        return None if contexts is None or not cgroup else contexts(cgroup)

    @property
    def sender_ns_pid(self) -> int | None:
        """The sender's tgid as its own pid namespace numbers it (the last NSpid of
        /proc/<pid>/status; read from task->thread_pid at the event); None when not read."""
        return self.shape.sender_ns_pid

    @property
    def sender_ns_tid(self) -> int | None:
        """The sender's tid in its own pid namespace; None when not read."""
        return self.shape.sender_ns_tid

    @property
    def target_ns_pid(self) -> int | None:
        """The recipient's tgid in its own pid namespace, read from the recipient's task at
        generation (tp_btf); None without it or when nothing was generated."""
        return self.shape.target_ns_pid

    @property
    def target_ns_tid(self) -> int | None:
        """The recipient's tid in its own pid namespace (tp_btf); None otherwise."""
        return self.shape.target_ns_tid

    @property
    def via(self) -> str:
        return self.shape.via

    @property
    def sender_pid(self) -> int:
        return self.shape.sender_pid

    @property
    def sender_tid(self) -> int:
        return self.shape.sender_tid

    @property
    def sender_comm(self) -> str:
        return self.shape.sender_comm

    @property
    def sender_uid(self) -> int:
        return self.shape.sender_uid

    @property
    def target_pid(self) -> int | None:
        return self.shape.target_pid

    @property
    def target_source(self) -> str | None:
        """Where target_pid came from: one of TARGET_SOURCES ("kernel": read at the event;
        "args": the call's argument; "proc": /proc after the event, best effort; "tid": the
        recipient thread's id standing in for its process), or None when target_pid is."""
        return self.shape.target_source

    @property
    def target_tid(self) -> int | None:
        return self.shape.target_tid

    @property
    def target_comm(self) -> str | None:
        return self.shape.target_comm

    @property
    def arg_pid(self) -> int | None:
        return self.shape.arg_pid

    @property
    def arg_tid(self) -> int | None:
        return self.shape.arg_tid

    @property
    def arg_pidfd(self) -> int | None:
        return self.shape.arg_pidfd

    @property
    def code(self) -> int | None:
        return self.shape.code

    @property
    def result(self) -> int | None:
        return self.shape.result

    @property
    def outcome(self) -> str | None:
        return self.shape.outcome

    @property
    def group(self) -> bool | None:
        return self.shape.group

    @property
    def stack_origin(self) -> str | None:
        """For a kernel-generated SIGKILL, the origin its kernel stack names (model/origins.py;
        None when no stack was taken or the path names none)."""
        return self.shape.stack_origin

    def _values(self) -> tuple[object, ...]:
        return (self.id, self.ktime_ns, self.time_ns, *self.shape.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable (fate is filled in later)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in VALUE_FIELDS)
        return f"Event({inner})"

    @property
    def signal(self) -> str:
        return signal_name(self.sig)

    @property
    def origin(self) -> str | None:
        if self.via != "kernel":
            return None
        return kernel_origin(self.sig, self.code if self.code is not None else SI_KERNEL,
                             self.stack_origin)

    @property
    def error(self) -> str | None:
        if self.result is None or self.result >= 0:
            return None
        return errno_name(self.result)

    @property
    def code_name(self) -> str | None:
        return None if self.code is None else code_name(self.code, self.sig)

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result < 0

    def iso_time(self) -> str:
        seconds, nanos = divmod(self.time_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{stamp}.{nanos // 1000:06d}Z"

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines object (documented in README; keys may be added, never renamed)."""
        return {
            "type": "signal",
            "id": self.id,
            "time": self.iso_time(),
            "ktime_ns": self.ktime_ns,
            "sig": self.sig,
            "signal": self.signal,
            "via": self.via,
            "origin": self.origin,
            "sender": {"pid": self.sender_pid, "tid": self.sender_tid,
                       "comm": self.sender_comm, "uid": self.sender_uid,
                       "cgroup_id": self.sender_cgroup, "ns_pid": self.sender_ns_pid,
                       "ns_tid": self.sender_ns_tid, "container": self.sender_container},
            "target": {"pid": self.target_pid, "tid": self.target_tid,
                       "comm": self.target_comm, "cgroup_id": self.target_cgroup,
                       "ns_pid": self.target_ns_pid, "ns_tid": self.target_ns_tid,
                       "source": self.target_source,
                       "container": self.target_container},
            "args": {"pid": self.arg_pid, "tid": self.arg_tid, "pidfd": self.arg_pidfd},
            "code": self.code,
            "code_name": self.code_name,
            "result": self.result,
            "error": self.error,
            "outcome": self.outcome,
        }


class Runs:
    """A decoded batch as Decoder.runs() hands it to the outputs: runs of equal records.

    ``items[i]`` is a Shape shared by the next ``lengths[i]`` records, whose kernel times are
    the next ``lengths[i]`` entries of ``ktimes`` (ns); or, with ``lengths[i] == 0``, an Event
    (a record off the hot path, with its own id and times). Ids are consecutive in order, from
    ``first_id``; a record's wall-clock time is its ktime + ``wall_offset_ns``. Flat lists, not
    an object per run: a batch of interleaved senders (every run one record long) allocates
    nothing per record that lives on (no tuples, no garbage collector work)."""

    __slots__ = ("items", "lengths", "ktimes", "first_id", "wall_offset_ns")

    def __init__(self, first_id: int, wall_offset_ns: int) -> None:
        self.items: list[Shape | Event] = []
        self.lengths: list[int] = []
        self.ktimes: list[int] = []
        self.first_id = first_id
        self.wall_offset_ns = wall_offset_ns

    def __len__(self) -> int:
        """Records in the batch (Events included)."""
        return len(self.ktimes) + self.lengths.count(0)

    def events(self) -> list[Event]:
        """One Event per record, in order (the Event path)."""
        events: list[Event] = []
        append, extend = events.append, events.extend
        ktimes, offset = self.ktimes, self.wall_offset_ns
        event_id, at = self.first_id, 0
        for item, count in zip(self.items, self.lengths, strict=True):
            if isinstance(item, Event):
                append(item)
                event_id += 1
                continue
            extend([Event(i, ktime, ktime + offset, item)
                    for i, ktime in enumerate(ktimes[at:at + count], event_id)])
            at += count
            event_id += count
        return events
