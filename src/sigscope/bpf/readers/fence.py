"""A load fence for the ring buffer reader on weakly ordered CPUs, without a compiler.

The reader must see a record's header before its payload, and the producer position before the
headers it covers (the kernel side: kernel/bpf/ringbuf.c publishes producer_pos with
smp_store_release and commits a record by clearing BUSY with an xchg, a full barrier, after the
payload is written; libbpf's consumer reads both with smp_load_acquire). Python's loads are plain
loads, so the order between them is the CPU's:

- x86_64 is TSO: a load is never reordered with an earlier load, so every load is already an
  acquire and no fence is needed (`load_fence()` returns None).
- aarch64 may reorder independent loads. `load_fence()` returns a callable that runs
  ``dmb ishld`` (orders every earlier load before every later load and store, inner shareable
  domain; Arm ARM, DMB), two instructions written into an anonymous page that is then made
  read+execute (never writable and executable at once). The kernel makes the page's instruction
  cache coherent when the executable PTE is installed (arch/arm64/mm/flush.c,
  __sync_icache_dcache); libgcc's __clear_cache is called as well where it exists.

Where executable memory is refused (a hardened policy), `load_fence()` raises FenceError: the
reader then reports it rather than read without the ordering it needs.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import struct
from collections.abc import Callable

from sigscope.bpf import arch
from sigscope.errors import SetupError

# A64 encodings (Arm ARM C6.2): DMB ISHLD = 0xD50339BF (CRm = 0b1001), RET (x30) = 0xD65F03C0.
_AARCH64_LOAD_FENCE = struct.pack("<II", 0xD50339BF, 0xD65F03C0)


class FenceError(SetupError, OSError):
    """The CPU needs a load fence and this process could not make one (one line)."""


@functools.cache
def load_fence(machine: str | None = None) -> Callable[[], None] | None:
    """None where plain loads are already ordered (x86_64); else a callable issuing a load
    fence (~0.1-0.2 us through ctypes: call it per batch, not per record). Raises FenceError
    when executable memory cannot be had, UnsupportedArchError for an unknown architecture."""
    name = arch.normalized_machine(machine)
    if name == "x86_64":
        return None
    if name != "aarch64":
        arch.syscall_numbers(name)  # raises UnsupportedArchError
        raise FenceError(f"no load fence known for {name}")
    return _code_function(_AARCH64_LOAD_FENCE)


def _code_function(code: bytes) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    size = mmap.PAGESIZE
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise FenceError(f"cannot map a page for the ring buffer's load fence: "
                         f"{_strerror(ctypes.get_errno())}")
    ctypes.memmove(address, code, len(code))
    if libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        raise FenceError(f"cannot make the ring buffer's load fence executable "
                         f"(mprotect PROT_EXEC: {_strerror(ctypes.get_errno())})")
    _clear_instruction_cache(address, size)
    # The page stays mapped for the life of the process (one page, made once).
    return ctypes.CFUNCTYPE(None)(address)


def _clear_instruction_cache(address: int, size: int) -> None:
    """Belt and braces on CPUs without coherent instruction caches: libgcc's __clear_cache
    (what JITs and libffi call after writing code). The kernel already syncs the page when it
    becomes executable, so a libgcc without it is no error."""
    try:
        libgcc = ctypes.CDLL("libgcc_s.so.1")
        clear = libgcc.__clear_cache
    except (OSError, AttributeError):
        return
    clear.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    clear.restype = None
    clear(address, address + size)


def _strerror(errno: int) -> str:
    import os

    return os.strerror(errno)
