"""What the user asked to see. Applied in the kernel wherever the key is known at the hook."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from sigscope.model.record import VIA_NAMES
from sigscope.model.signals import SIGRTMAX, parse_signal_list

MAX_IN_KERNEL_IDS = 16  # each pid/tid compared costs an instruction per event


class FilterError(ValueError):
    """A filter the user gave that cannot be honoured (one line)."""


class _FilterValues(NamedTuple):
    sender_pids: frozenset[int] = frozenset()   # -p: sender thread-group ids
    target_ids: frozenset[int] = frozenset()    # -T: target process or thread ids
    signals: frozenset[int] | None = None       # -s minus -e; None = every signal (0 included)
    comm: str | None = None                     # -c: sender command (exact, first 15 bytes)
    vias: frozenset[str] = frozenset(VIA_NAMES)  # --via, -k
    failed_only: bool = False                   # -x: only sends that failed


class Filters(_FilterValues):
    """An immutable, validated set of filters (a NamedTuple: cheap to import and to build)."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Filters:
        self = super().__new__(cls, *args, **kwargs)
        unknown = set(self.vias) - set(VIA_NAMES)
        if unknown:
            raise FilterError(
                f"unknown via {', '.join(sorted(unknown))!s}: choose from {', '.join(VIA_NAMES)}"
            )
        for what, ids in (("--pid", self.sender_pids), ("--tpid", self.target_ids)):
            if len(ids) > MAX_IN_KERNEL_IDS:
                raise FilterError(f"{what} takes at most {MAX_IN_KERNEL_IDS} ids")
            if any(i <= 0 for i in ids):
                raise FilterError(f"{what} ids must be positive")
        if self.comm is not None and not self.comm:
            raise FilterError("--comm needs a command name")
        return self

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
    vias: Iterable[str] | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
) -> Filters:
    """Filters from the options of ``sigscope trace``/``top`` (and their Python API).

    ``signals``/``exclude_signals`` take numbers or a spec like "USR1,SIGRTMIN+3" (raises
    signals.SignalSpecError); ``vias`` names send paths (record.VIA_NAMES; default all);
    ``kill_only`` drops kernel-generated signals. Raises FilterError for a filter that cannot
    be honoured."""
    def as_set(value: Iterable[int] | str) -> frozenset[int]:
        return parse_signal_list(value) if isinstance(value, str) else frozenset(value)

    wanted: frozenset[int] | None = None
    if signals is not None:
        wanted = as_set(signals)
    if exclude_signals is not None:
        every = frozenset(range(SIGRTMAX + 1))  # 0 (the null signal) to SIGRTMAX
        wanted = (wanted if wanted is not None else every) - as_set(exclude_signals)
    via_set = frozenset(vias) if vias is not None else frozenset(VIA_NAMES)
    if kill_only:
        via_set -= {"kernel"}
    return Filters(
        sender_pids=frozenset(pids), target_ids=frozenset(target_ids), signals=wanted,
        comm=comm, vias=via_set, failed_only=failed_only,
    )
