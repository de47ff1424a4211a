"""Kernel stacks of kernel-generated SIGKILLs -> their origin (model/origins.py).

The signal_generate probe stores the kernel stack of a kernel SIGKILL in a stack-trace map
(programs/origin.py). Here its addresses are named from /proc/kallsyms (read once, on the first
SIGKILL, ~0.1 s; text symbols only) and the function that asked for the signal gives the origin.
Without readable addresses (kptr_restrict hides them: every address 0) nothing is named and the
origin stays "other".
"""

from __future__ import annotations

import bisect
import struct

from sigscope.bpf.maps import Map
from sigscope.model.origins import origin_from_stack

KALLSYMS = "/proc/kallsyms"
_TEXT_TYPES = frozenset("tTwW")


class KernelSymbols:
    """Addresses -> kernel function names, from a kallsyms file (loaded on first use)."""

    def __init__(self, path: str = KALLSYMS) -> None:
        self.path = path
        self._addresses: list[int] | None = None
        self._names: list[str] = []

    def _load(self) -> list[int]:
        pairs: list[tuple[int, str]] = []
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    parts = line.split(None, 3)
                    if len(parts) >= 3 and parts[1].decode() in _TEXT_TYPES:
                        address = int(parts[0], 16)
                        if address:
                            pairs.append((address, parts[2].decode("ascii", "replace")))
        except OSError:
            pairs = []
        pairs.sort()
        self._names = [name for _, name in pairs]
        return [address for address, _ in pairs]

    def name(self, address: int) -> str | None:
        """The function containing `address` (the nearest symbol at or below it), or None."""
        if self._addresses is None:
            self._addresses = self._load()
        index = bisect.bisect_right(self._addresses, address) - 1
        return self._names[index] if index >= 0 else None


class KernelStacks:
    """Origins of the stacks in a BPF stack-trace map, memoised per stack id (a stack id names
    one stack for as long as it stays in the map, and sigscope never deletes one)."""

    def __init__(self, stack_map: Map, symbols: KernelSymbols | None = None) -> None:
        self.map = stack_map
        self.symbols = symbols or KernelSymbols()
        self._origins: dict[int, str | None] = {}

    def functions(self, stack_id: int) -> list[str]:
        """The stack's functions, innermost first ([] when the map has no such stack)."""
        try:
            raw = self.map.lookup(struct.pack("<I", stack_id))
        except OSError:
            return []
        if not isinstance(raw, bytes):  # none, or a per-CPU value list (not a stack map)
            return []
        names = []
        for (address,) in struct.iter_unpack("<Q", raw):
            if address == 0:
                break
            name = self.symbols.name(address)
            if name is not None:
                names.append(name)
        return names

    def origin(self, stack_id: int) -> str | None:
        if stack_id not in self._origins:
            self._origins[stack_id] = origin_from_stack(self.functions(stack_id))
        return self._origins[stack_id]
