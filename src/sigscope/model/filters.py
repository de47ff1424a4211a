"""What the user asked to see. Applied in the kernel wherever the key is known at the hook."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from sigscope.errors import UsageError
from sigscope.model.record import VIA_NAMES
from sigscope.model.signals import parse_signal_list

MAX_IN_KERNEL_IDS = 16  # each pid/tid compared costs an instruction per event
# include/linux/threads.h: PID_MAX_LIMIT of 64-bit kernels, above any pid_max.
PID_MAX_LIMIT = 4 * 1024 * 1024
# The deepest cgroup level a filter may name (cgroup v2's cgroup.max.depth allows more; no
# container runtime nests anywhere near this).
MAX_CGROUP_LEVEL = 1024


class FilterError(UsageError):
    """A filter the user gave that cannot be honoured (one line)."""


class _FilterValues(NamedTuple):
    sender_pids: frozenset[int] = frozenset()   # -p: sender thread-group ids
    target_ids: frozenset[int] = frozenset()    # -T: target process or thread ids
    signals: frozenset[int] | None = None       # -s minus -e; None = every signal (0 included)
    # -e without -s: these are left out and every other number passes, invalid ones (65, -1)
    # included: excluding SIGCHLD must not hide a send of signal 65 (EINVAL).
    excluded_signals: frozenset[int] = frozenset()
    comm: str | None = None                     # -c: sender command (exact, first 15 bytes)
    vias: frozenset[str] = frozenset(VIA_NAMES)  # --via, -k
    failed_only: bool = False                   # -x: only sends that failed
    # --cgroup, --container: (cgroup v2 id, its level: 0 the hierarchy's root) of cgroups; a
    # record matches when its sender's or its recipient's cgroup is one of them or below one.
    cgroups: frozenset[tuple[int, int]] = frozenset()


class Filters(_FilterValues):
    """An immutable, validated set of filters (a NamedTuple: cheap to import and to build)."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Filters:
        self = super().__new__(cls, *args, **kwargs)
        unknown = set(self.vias) - set(VIA_NAMES)
        if unknown:
            raise FilterError(
                f"vias= has unknown {', '.join(sorted(map(repr, unknown)))}: choose from "
                f"{', '.join(VIA_NAMES)}"
            )
        if not self.vias:
            raise FilterError("vias= is empty: name at least one send path")
        if self.signals is not None and not self.signals:
            raise FilterError("signals= is empty: name at least one signal")
        # The API's names (trace(pids=...)): the command line turns them into its flags.
        for what, ids in (("pids", self.sender_pids), ("target_ids", self.target_ids)):
            if len(ids) > MAX_IN_KERNEL_IDS:
                raise FilterError(f"{what}= takes at most {MAX_IN_KERNEL_IDS} ids")
            if any(not isinstance(i, int) or not 0 < i <= PID_MAX_LIMIT for i in ids):
                raise FilterError(f"{what}= ids must be from 1 to {PID_MAX_LIMIT} "
                                  "(PID_MAX_LIMIT: no process or thread id is larger)")
        if len(self.cgroups) > MAX_IN_KERNEL_IDS:
            raise FilterError(f"cgroups= takes at most {MAX_IN_KERNEL_IDS} cgroups")
        if any(not (isinstance(pair, tuple) and len(pair) == 2
                    and all(isinstance(v, int) for v in pair)
                    and 0 < pair[0] < 1 << 64 and 0 <= pair[1] <= MAX_CGROUP_LEVEL)
               for pair in self.cgroups):
            raise FilterError("cgroups= takes (cgroup id, level) pairs: an id from 1 to "
                              f"2**64 - 1 and a level from 0 to {MAX_CGROUP_LEVEL}")
        if self.signals is not None and self.excluded_signals:
            raise FilterError("give wanted signals minus excluded ones, or excluded ones alone")
        if self.comm is not None and not self.comm:
            raise FilterError("comm= needs a command name")
        return self

    def wants_signal(self, sig: int) -> bool:
        """Whether the signal filters (-s, -e) keep signal number `sig` (any int)."""
        if self.signals is not None:
            return sig in self.signals
        return sig not in self.excluded_signals

    @property
    def include_kernel(self) -> bool:
        return "kernel" in self.vias and not self.failed_only

    @property
    def syscall_vias(self) -> frozenset[str]:
        return frozenset(v for v in self.vias if v != "kernel")

    def comm_bytes(self) -> bytes | None:
        """The comm as the kernel stores it: at most 15 bytes, NUL padded to 16."""
        if self.comm is None:
            return None
        return self.comm.encode()[:15].ljust(16, b"\0")


def make_filters(
    signals: Iterable[int] | str | None = None,
    exclude_signals: Iterable[int] | str | None = None,
    pids: Iterable[int] = (),
    target_ids: Iterable[int] = (),
    comm: str | None = None,
    vias: Iterable[str] | str | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
    cgroups: Iterable[tuple[int, int]] = (),
) -> Filters:
    """Filters from the API's arguments (those of ``trace()``).

    ``signals``/``exclude_signals``: numbers or a spec like "USR1,SIGRTMIN+3"; ``vias``: names,
    or one comma-separated string ("kill,tgkill"). Filters that can match nothing
    (``signals`` all excluded, an empty ``vias``, ``vias`` of only "kernel" with ``kill_only``
    or ``failed_only``) raise UsageError rather than trace nothing. ``cgroups``: (cgroup v2 id,
    level) pairs (``containers.cgroup_filter``), matched on either side."""
    def as_set(value: Iterable[int] | str) -> frozenset[int]:
        return parse_signal_list(value) if isinstance(value, str) else frozenset(value)

    wanted: frozenset[int] | None = None
    excluded: frozenset[int] = frozenset()
    if signals is not None:
        wanted = as_set(signals)
        if not wanted:
            raise FilterError("signals= is empty: name at least one signal")
    if exclude_signals is not None:
        excluded = as_set(exclude_signals)
        if not excluded:
            raise FilterError("exclude_signals= is empty: name at least one signal")
        # With signals=, the exclusion narrows the wanted set; alone it stays an exclusion
        # (numbers no signal has, sent by mistake, still show).
        if wanted is not None:
            wanted -= excluded
            excluded = frozenset()
            if not wanted:
                raise FilterError("exclude_signals= leaves out every signal of signals=: "
                                 "nothing to trace")
    if isinstance(vias, str):
        vias = [v.strip() for v in vias.split(",") if v.strip()]
    via_set = frozenset(vias) if vias is not None else frozenset(VIA_NAMES)
    if not via_set:
        raise FilterError("vias= is empty: name at least one send path")
    if kill_only:
        if via_set <= {"kernel"}:
            raise FilterError("kill_only= leaves out 'kernel', the only send path in vias=: "
                             "nothing to trace")
        via_set -= {"kernel"}
    if failed_only and via_set <= {"kernel"}:
        raise FilterError("failed_only= keeps failed sends only, and vias= has only 'kernel' "
                         "(the kernel's own signals never fail): nothing to trace")
    return Filters(
        sender_pids=frozenset(pids), target_ids=frozenset(target_ids), signals=wanted,
        excluded_signals=excluded,
        comm=comm, vias=via_set, failed_only=failed_only, cgroups=frozenset(cgroups),
    )
