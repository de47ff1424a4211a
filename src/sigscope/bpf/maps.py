"""BPF maps owned by Python objects: create, look up, update, delete, iterate, batch-read.

Keys and values are raw ``bytes`` of exactly the map's sizes (callers pack them with ``struct``).
Per-CPU maps read and write a list of per-CPU values, one per possible CPU; the kernel lays each
CPU's value out rounded up to 8 bytes, and we hand back exactly ``value_size`` bytes of each.
"""

from __future__ import annotations

import ctypes
import errno
import re
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from sigscope.bpf import arch, uapi
from sigscope.bpf.arch import possible_cpus
from sigscope.bpf.syscall import (
    BPFError,
    BpfMapInfo,
    FdOwner,
    MapBatchAttr,
    MapCreateAttr,
    MapElemAttr,
    MapGetNextKeyAttr,
    bpf,
    obj_get_info_by_fd,
)

__all__ = [
    "ArrayMap",
    "HashMap",
    "Map",
    "PerCPUArrayMap",
    "PerCPUHashMap",
    "PerfEventArrayMap",
    "RingBufMap",
    "StackTraceMap",
    "possible_cpus",
    "validate_object_name",
]

# A map's value as lookup() returns it: bytes, or for per-CPU maps one bytes per possible CPU.
_V = TypeVar("_V", bytes, list[bytes])

_OBJECT_NAME = re.compile(r"[A-Za-z0-9_.]*")
# Errors meaning "this kernel or this map type has no batch operations".
_NO_BATCH_ERRNOS = {errno.EINVAL, errno.EOPNOTSUPP, 524}  # 524: the kernel-internal ENOTSUPP
_PAGE_SIZE = 4096


def validate_object_name(name: str, kind: str = "map") -> bytes:
    """Check a map/program name against the kernel's rules and return it encoded.

    The kernel takes at most BPF_OBJ_NAME_LEN - 1 characters from [A-Za-z0-9_.].
    """
    if len(name) >= uapi.BPF_OBJ_NAME_LEN or not _OBJECT_NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: at most {uapi.BPF_OBJ_NAME_LEN - 1} characters "
            "from A-Z a-z 0-9 _ ."
        )
    return name.encode("ascii")


def _round_up_8(size: int) -> int:
    return (size + 7) & ~7


class Map(FdOwner, Generic[_V]):
    """A BPF map; the object owns the fd (close() or use as a context manager). Its values are
    bytes (``Map[bytes]``), or one bytes per possible CPU for per-CPU maps
    (``Map[list[bytes]]``)."""

    kind = "map"

    def __init__(
        self,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        name: str = "",
        flags: int = 0,
    ) -> None:
        encoded_name = validate_object_name(name)
        attr = MapCreateAttr(
            map_type=map_type,
            key_size=key_size,
            value_size=value_size,
            max_entries=max_entries,
            map_flags=flags,
            map_name=encoded_name,
        )
        try:
            fd = bpf(uapi.BPF_MAP_CREATE, attr)
        except BPFError as err:
            err.detail = (
                f"map {name or '(unnamed)'}: type={map_type} key_size={key_size} "
                f"value_size={value_size} max_entries={max_entries}"
            )
            raise
        self._fd: int | None = fd
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.name = name

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return (
            f"{type(self).__name__}(name={self.name!r}, key_size={self.key_size}, "
            f"value_size={self.value_size}, max_entries={self.max_entries}, {state})"
        )

    def info(self) -> BpfMapInfo:
        info = BpfMapInfo()
        obj_get_info_by_fd(self.fd, info)
        return info

    # --- value layout (per-CPU maps override) ------------------------------------------------

    @property
    def _raw_value_size(self) -> int:
        return self.value_size

    def _decode_value(self, raw: bytes) -> _V:
        return raw  # type: ignore[return-value]  # per-CPU maps override

    def _encode_value(self, value: _V | bytes, command: str) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise self._size_error(command, "value must be bytes")
        if len(value) != self.value_size:
            raise self._size_error(
                command, f"value is {len(value)} bytes, expected {self.value_size}"
            )
        return bytes(value)

    def _size_error(self, command: str, what: str) -> BPFError:
        # Checked here because the kernel reads key_size/value_size bytes from our pointer
        # whatever length the Python buffer has.
        return BPFError(errno.EINVAL, command, f"map {self.name or '(unnamed)'}: {what}")

    def _key_buffer(self, key: bytes, command: str) -> ctypes.Array:
        if not isinstance(key, (bytes, bytearray)):
            raise self._size_error(command, "key must be bytes")
        if len(key) != self.key_size:
            raise self._size_error(
                command, f"key is {len(key)} bytes, expected {self.key_size}"
            )
        return ctypes.create_string_buffer(bytes(key), max(self.key_size, 1))

    def _call(self, cmd: int, attr: ctypes.Structure) -> int:
        try:
            return bpf(cmd, attr)
        except BPFError as err:
            if not err.detail:
                err.detail = f"map {self.name or '(unnamed)'}"
            raise

    # --- element operations ------------------------------------------------------------------

    def lookup(self, key: bytes) -> _V | None:
        """The value stored under `key`, or None when there is none."""
        key_buf = self._key_buffer(key, "BPF_MAP_LOOKUP_ELEM")
        value_buf = ctypes.create_string_buffer(max(self._raw_value_size, 1))
        attr = MapElemAttr(
            map_fd=self.fd, key=ctypes.addressof(key_buf), value=ctypes.addressof(value_buf)
        )
        try:
            self._call(uapi.BPF_MAP_LOOKUP_ELEM, attr)
        except BPFError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(value_buf.raw[: self._raw_value_size])

    def update(self, key: bytes, value: _V | bytes, flags: int = uapi.BPF_ANY) -> None:
        key_buf = self._key_buffer(key, "BPF_MAP_UPDATE_ELEM")
        raw = self._encode_value(value, "BPF_MAP_UPDATE_ELEM")
        value_buf = ctypes.create_string_buffer(raw, max(len(raw), 1))
        attr = MapElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(key_buf),
            value=ctypes.addressof(value_buf),
            flags=flags,
        )
        self._call(uapi.BPF_MAP_UPDATE_ELEM, attr)

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False when it was not there."""
        key_buf = self._key_buffer(key, "BPF_MAP_DELETE_ELEM")
        attr = MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key_buf))
        try:
            self._call(uapi.BPF_MAP_DELETE_ELEM, attr)
        except BPFError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate the keys (BPF_MAP_GET_NEXT_KEY). Safe against concurrent deletion."""
        current: ctypes.Array | None = None
        next_buf = ctypes.create_string_buffer(max(self.key_size, 1))
        while True:
            attr = MapGetNextKeyAttr(
                map_fd=self.fd,
                key=0 if current is None else ctypes.addressof(current),
                next_key=ctypes.addressof(next_buf),
            )
            try:
                self._call(uapi.BPF_MAP_GET_NEXT_KEY, attr)
            except BPFError as err:
                if err.errno == errno.ENOENT:
                    return
                raise
            key = next_buf.raw[: self.key_size]
            yield key
            current = ctypes.create_string_buffer(key, max(self.key_size, 1))

    def items(self) -> list[tuple[bytes, _V]]:
        """(key, value) pairs, one lookup per key; keys deleted meanwhile are skipped."""
        pairs = []
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                pairs.append((key, value))
        return pairs

    def lookup_batch(self, batch_size: int = 256) -> list[tuple[bytes, _V]]:
        """All (key, value) pairs via BPF_MAP_LOOKUP_BATCH, or by iteration when the kernel or
        the map type has no batch operations (the command's own refusal says so: this layer
        sits below features.py, whose `map_batch` probe reports the same fact)."""
        try:
            return self._lookup_batch(batch_size)
        except BPFError as err:
            if err.errno in _NO_BATCH_ERRNOS and err.command == "BPF_MAP_LOOKUP_BATCH":
                return self.items()
            raise

    def _lookup_batch(self, batch_size: int) -> list[tuple[bytes, _V]]:
        count = max(1, min(batch_size, self.max_entries))
        # The batch token is opaque; hash maps use a u32 bucket, arrays a key.
        token_size = max(self.key_size, 8)
        in_token = ctypes.create_string_buffer(token_size)
        out_token = ctypes.create_string_buffer(token_size)
        pairs: list[tuple[bytes, _V]] = []
        first = True
        while True:
            keys = ctypes.create_string_buffer(max(self.key_size * count, 1))
            values = ctypes.create_string_buffer(max(self._raw_value_size * count, 1))
            attr = MapBatchAttr(
                in_batch=0 if first else ctypes.addressof(in_token),
                out_batch=ctypes.addressof(out_token),
                keys=ctypes.addressof(keys),
                values=ctypes.addressof(values),
                count=count,
                map_fd=self.fd,
            )
            finished = False
            try:
                self._call(uapi.BPF_MAP_LOOKUP_BATCH, attr)
            except BPFError as err:
                if err.errno == errno.ENOENT:
                    finished = True  # end reached; attr.count says how many were still filled
                elif err.errno == errno.ENOSPC and count < self.max_entries:
                    # One hash bucket holds more entries than `count`: retry it larger.
                    count = min(count * 2, self.max_entries)
                    continue
                else:
                    raise
            raw_keys, raw_values = keys.raw, values.raw
            for index in range(attr.count):
                key = raw_keys[index * self.key_size : (index + 1) * self.key_size]
                start = index * self._raw_value_size
                pairs.append(
                    (key, self._decode_value(raw_values[start : start + self._raw_value_size]))
                )
            if finished:
                return pairs
            ctypes.memmove(in_token, out_token, token_size)
            first = False

    def clear(self) -> None:
        """Remove every entry (array maps, whose entries cannot be deleted, are zeroed)."""
        for key in list(self.keys()):
            self.delete(key)


class HashMap(Map[bytes]):
    def __init__(
        self, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0
    ) -> None:
        super().__init__(uapi.BPF_MAP_TYPE_HASH, key_size, value_size, max_entries, name, flags)


class ArrayMap(Map[bytes]):
    """Keys are u32 indexes (4 bytes); entries always exist and start zeroed."""

    def __init__(self, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        super().__init__(uapi.BPF_MAP_TYPE_ARRAY, 4, value_size, max_entries, name, flags)

    def clear(self) -> None:
        zero = self._zero_value()
        for key in list(self.keys()):
            self.update(key, zero)

    def _zero_value(self) -> bytes:
        return bytes(self.value_size)


class _PerCPUValues(Map[list[bytes]]):
    """Values are lists with one bytes value per possible CPU."""

    @property
    def _raw_value_size(self) -> int:
        return _round_up_8(self.value_size) * possible_cpus()

    def _decode_value(self, raw: bytes) -> list[bytes]:
        stride = _round_up_8(self.value_size)
        return [
            raw[cpu * stride : cpu * stride + self.value_size] for cpu in range(possible_cpus())
        ]

    def _encode_value(self, value: list[bytes] | bytes, command: str) -> bytes:
        """A list gives each CPU its value; a single bytes value is written to every CPU."""
        cpus = possible_cpus()
        per_cpu: Sequence[bytes]
        if isinstance(value, (bytes, bytearray)):
            per_cpu = [bytes(value)] * cpus
        else:
            per_cpu = list(value)
        if len(per_cpu) != cpus:
            raise self._size_error(command, f"{len(per_cpu)} per-CPU values, expected {cpus}")
        stride = _round_up_8(self.value_size)
        out = bytearray()
        for one in per_cpu:
            out += super()._encode_value(one, command)
            out += bytes(stride - self.value_size)
        return bytes(out)

    def sum_u64(self, key: bytes) -> int:
        """Sum a u64 counter across CPUs (0 when the key is missing)."""
        values = self.lookup(key)
        if values is None:
            return 0
        return sum(int.from_bytes(v[:8], "little") for v in values)


class PerCPUHashMap(_PerCPUValues):
    def __init__(
        self, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0
    ) -> None:
        super().__init__(
            uapi.BPF_MAP_TYPE_PERCPU_HASH, key_size, value_size, max_entries, name, flags
        )


class PerCPUArrayMap(_PerCPUValues):
    def __init__(self, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        super().__init__(uapi.BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size, max_entries, name, flags)

    def clear(self) -> None:
        zero = bytes(self.value_size)
        for key in list(self.keys()):
            self.update(key, zero)


class RingBufMap(Map[bytes]):
    """BPF_MAP_TYPE_RINGBUF; `size_bytes` must be a power of two and a multiple of the page
    size. Read it with ringbuf.RingBufReader; it has no keys."""

    def __init__(self, size_bytes: int, name: str = "") -> None:
        if size_bytes < _PAGE_SIZE or size_bytes & (size_bytes - 1):
            raise ValueError(
                f"ring buffer size {size_bytes} must be a power of two of at least {_PAGE_SIZE}"
            )
        super().__init__(uapi.BPF_MAP_TYPE_RINGBUF, 0, 0, size_bytes, name)

    @property
    def size_bytes(self) -> int:
        return self.max_entries


class PerfEventArrayMap(Map[bytes]):
    """BPF_MAP_TYPE_PERF_EVENT_ARRAY indexed by CPU id; values are perf event fds (u32)."""

    def __init__(self, name: str = "", max_entries: int | None = None) -> None:
        if max_entries is None:
            max_entries = max(arch.possible_cpu_ids()) + 1
        super().__init__(uapi.BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, max_entries, name)


class StackTraceMap(Map[bytes]):
    """BPF_MAP_TYPE_STACK_TRACE: u32 stack ids to arrays of `max_depth` u64 addresses."""

    def __init__(
        self, max_entries: int, max_depth: int = 127, name: str = "", flags: int = 0
    ) -> None:
        super().__init__(
            uapi.BPF_MAP_TYPE_STACK_TRACE, 4, 8 * max_depth, max_entries, name, flags
        )
        self.max_depth = max_depth
