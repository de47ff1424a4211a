"""Find the members of a few named structs in the kernel's BTF without indexing all of it.

A full parser (``sigscope.bpf.btf``, for type ids) reads all 5 MB of vmlinux BTF and walks every one
of its 100k+ types (tens of ms in Python: bench/README.md): start-up cannot afford that just to
learn where ``task_struct.comm`` is. A struct's record can be found directly instead: its name
is one string of the (deduplicated) string section, and its record is the 4-byte-aligned spot
of the type section holding that string's offset followed by an ``info`` word of kind STRUCT.
The sections are read from their start in 64 KiB steps, only as far as needed: the core structs
come early (``task_struct`` and ``cred`` within the first 25 KiB of types here), so finding
both reads a small fraction of the file.

Only direct, non-bitfield members are reported, with the distance to the next member (an upper
bound of the member's size). Anything malformed or missing raises ``BtfScanError``: callers
fall back to a way that needs no offsets.

    members = vmlinux_struct_members("task_struct")["task_struct"]
    members["comm"]      # ScannedMember(offset=..., span=16): offsets vary by kernel build
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import NamedTuple

from sigscope.errors import SetupError

VMLINUX_BTF_PATH = "/sys/kernel/btf/vmlinux"
# The documented switch (README "Supported kernels"): with SIGSCOPE_NO_BTF set to anything but
# "" or "0", sigscope behaves as if the kernel had no /sys/kernel/btf/vmlinux (a kernel built
# without CONFIG_DEBUG_INFO_BTF), so that path can be run and tested on any kernel. Read here
# only; btf.py and features.py ask vmlinux_btf_disabled().
NO_BTF_ENV = "SIGSCOPE_NO_BTF"
BTF_MAGIC = 0xEB9F
BTF_KIND_STRUCT = 4
_CHUNK = 1 << 16
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off/len
_TYPE = struct.Struct("<III")         # name_off, info, size (struct btf_type)
_MEMBER = struct.Struct("<III")       # name_off, type, offset (struct btf_member)


class BtfScanError(SetupError, ValueError):
    """One line: why the members could not be found."""


def vmlinux_btf_disabled() -> bool:
    """True when SIGSCOPE_NO_BTF asks sigscope to act as if the kernel had no vmlinux BTF."""
    return os.environ.get(NO_BTF_ENV, "").strip() not in ("", "0")


def vmlinux_btf_missing_reason(path: str = VMLINUX_BTF_PATH) -> str | None:
    """Why the kernel's BTF cannot be used (one line), or None when it can be read."""
    if path == VMLINUX_BTF_PATH and vmlinux_btf_disabled():
        return f"kernel BTF disabled by {NO_BTF_ENV}"
    if not os.path.exists(path):
        return f"kernel BTF not found at {path} (CONFIG_DEBUG_INFO_BTF=n)"
    return None


class ScannedMember(NamedTuple):
    offset: int  # bytes from the start of the struct
    span: int    # bytes to the next member (or to the end of the struct)


class _Section:
    """A BTF section read from its start, further on demand."""

    def __init__(self, read_at: Callable[[int, int], bytes], start: int, length: int) -> None:
        self._read_at, self._start, self.length = read_at, start, length
        self.data = b""

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.length

    def ensure(self, size: int) -> None:
        """Have at least `size` bytes (or the whole section)."""
        size = min(size, self.length)
        parts = [self.data]
        have = len(self.data)
        while have < size:
            chunk = self._read_at(self._start + have, min(_CHUNK, self.length - have))
            if not chunk:
                raise BtfScanError("BTF is shorter than its header says")
            parts.append(chunk)
            have += len(chunk)
        self.data = b"".join(parts)

    def more(self) -> None:
        self.ensure(len(self.data) + _CHUNK)

    def string_at(self, off: int) -> bytes:
        while True:
            end = self.data.find(b"\0", off)
            if end >= 0 or self.complete:
                break
            self.more()
        return self.data[off:end] if end >= 0 else b""


def struct_members(data: bytes, name: str) -> dict[str, ScannedMember]:
    """The named direct members of the STRUCT called `name` in a little-endian BTF blob,
    which must hold exactly one."""
    return _scan(lambda off, n: data[off:off + n], [name], unique=True)[name]


def vmlinux_struct_members(*names: str, path: str = VMLINUX_BTF_PATH
                           ) -> dict[str, dict[str, ScannedMember]]:
    """{struct name: members} from the kernel's BTF, reading only as far as the structs. The
    first STRUCT record of each name is taken: vmlinux BTF is deduplicated, so a core kernel
    struct is defined once."""
    if path == VMLINUX_BTF_PATH and vmlinux_btf_disabled():
        raise BtfScanError(f"kernel BTF disabled by {NO_BTF_ENV}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BtfScanError(f"cannot read BTF from {path}: {e.strerror or e}") from None

    def read_at(offset: int, size: int) -> bytes:
        parts, end = [], offset + size
        while offset < end:  # sysfs hands out one page per read
            chunk = os.pread(fd, end - offset, offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    try:
        return _scan(read_at, list(names), unique=False)
    except OSError as e:
        raise BtfScanError(f"cannot read BTF from {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _scan(read_at: Callable[[int, int], bytes], names: list[str],
          unique: bool) -> dict[str, dict[str, ScannedMember]]:
    hdr_len, type_off, type_len, str_off, str_len = _header(read_at(0, _HEADER.size))
    if (hdr_len + type_off) % 4 or not str_len:
        raise BtfScanError("malformed BTF: sections misplaced")
    types = _Section(read_at, hdr_len + type_off, type_len)
    strings = _Section(read_at, hdr_len + str_off, str_len)
    strings.ensure(1)
    if strings.data[:1] != b"\0":
        raise BtfScanError("malformed BTF: the string section does not start with a NUL")
    return {name: _find_struct(types, strings, name, unique) for name in names}


def _header(header: bytes) -> tuple[int, int, int, int, int]:
    """(hdr_len, type_off, type_len, str_off, str_len) of struct btf_header; BtfScanError
    unless it is little-endian BTF version 1."""
    if len(header) < _HEADER.size:
        raise BtfScanError("malformed BTF: shorter than its header")
    magic, version, _flags, *sections = _HEADER.unpack(header)
    if magic != BTF_MAGIC or version != 1:
        raise BtfScanError("BTF is not little-endian version 1")
    hdr_len, type_off, type_len, str_off, str_len = sections
    return hdr_len, type_off, type_len, str_off, str_len


def _find_struct(types: _Section, strings: _Section, name: str,
                 unique: bool) -> dict[str, ScannedMember]:
    needle = b"\0" + name.encode() + b"\0"
    while (at := strings.data.find(needle)) < 0 and not strings.complete:
        strings.more()
    if at < 0:
        raise BtfScanError(f"BTF has no struct named {name}")
    # name_off, then an info word whose top byte is kind STRUCT (kflag clear or set).
    record = re.compile(re.escape(struct.pack("<I", at + 1)) + b"..\0[\x04\x84]", re.DOTALL)
    found: list[dict[str, ScannedMember]] = []
    searched = 0
    while True:
        # A match may straddle the end of what was read: search again from 7 bytes before it.
        data = types.data
        for match in record.finditer(data, max(0, searched - 7)):
            members = _struct_at(types, strings, match.start())
            if members is not None:
                if not unique:
                    return members
                found.append(members)
        searched = len(data)
        if searched >= types.length:
            break
        types.ensure(searched + _CHUNK)
    if len(found) != 1:
        raise BtfScanError(f"BTF has {len(found)} structs named {name}, want exactly one")
    return found[0]


def _struct_at(types: _Section, strings: _Section, pos: int) -> dict[str, ScannedMember] | None:
    """The members of the STRUCT record at pos, or None if pos is not one."""
    if pos % 4:
        return None
    types.ensure(pos + _TYPE.size)
    if pos + _TYPE.size > len(types.data):
        return None
    _name_off, info, size = _TYPE.unpack_from(types.data, pos)
    vlen, kflag = info & 0xFFFF, info >> 31
    if info & 0x60FF0000 or not size:
        return None  # unused info bits set: not a type record
    first = pos + _TYPE.size
    types.ensure(first + vlen * _MEMBER.size)
    if first + vlen * _MEMBER.size > len(types.data):
        return None
    raw = [_MEMBER.unpack_from(types.data, first + i * _MEMBER.size) for i in range(vlen)]
    bit_offsets = [(off & 0xFFFFFF) if kflag else off for _n, _t, off in raw]
    if any(bit_offsets[i] > bit_offsets[i + 1] for i in range(len(bit_offsets) - 1)) or (
            bit_offsets and bit_offsets[-1] > size * 8):
        return None  # members of a struct are in layout order, inside it
    members: dict[str, ScannedMember] = {}
    for i, (name_off, _type, off) in enumerate(raw):
        bit_off = bit_offsets[i]
        if not name_off or (kflag and off >> 24) or bit_off % 8:
            continue  # anonymous, or a bitfield
        if name_off >= strings.length:
            return None
        end_bits = next((later for later in bit_offsets[i + 1:] if later > bit_off), size * 8)
        member_name = strings.string_at(name_off).decode("ascii", "replace")
        members[member_name] = ScannedMember(bit_off // 8, (end_bits - bit_off) // 8)
    return members


# --- type ids ---------------------------------------------------------------------------------
# A type's id is its position in the type section (the first record is id 1), so finding one
# means stepping over every record before it. Each step needs only the record's kind and vlen:
# the bytes after the 12-byte struct btf_type, by kind (include/uapi/linux/btf.h): (fixed,
# per vlen entry).
_KIND_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0),    # INT: u32 encoding
    3: (12, 0),   # ARRAY: struct btf_array
    4: (0, 12),   # STRUCT: struct btf_member per member
    5: (0, 12),   # UNION
    6: (0, 8),    # ENUM: struct btf_enum
    13: (0, 8),   # FUNC_PROTO: struct btf_param
    14: (4, 0),   # VAR: struct btf_var
    15: (0, 12),  # DATASEC: struct btf_var_secinfo
    17: (4, 0),   # DECL_TAG: struct btf_decl_tag
    19: (0, 12),  # ENUM64: struct btf_enum64
}
# Kinds with nothing after struct btf_type: PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
# FLOAT, TYPE_TAG.
_KIND_PLAIN = frozenset({2, 7, 8, 9, 10, 11, 12, 16, 18})
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12


def vmlinux_type_id(name: str, kind: int, path: str = VMLINUX_BTF_PATH) -> int | None:
    """The BTF id of the first type called `name` of `kind` (BTF_KIND_TYPEDEF, BTF_KIND_FUNC)
    in the kernel's BTF, or None when there is none (or no usable BTF). Quicker than indexing
    every type (sigscope.bpf.btf): the record is found by its name offset, then only the
    records before it are stepped over, reading nothing but their info words."""
    if path == VMLINUX_BTF_PATH and vmlinux_btf_disabled():
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
        return type_id_in(data, name, kind)
    except (OSError, BtfScanError):
        return None


def type_id_in(data: bytes, name: str, kind: int) -> int | None:
    """vmlinux_type_id over a little-endian BTF blob. Raises BtfScanError when malformed."""
    hdr_len, type_off, type_len, str_off, str_len = _header(data[:_HEADER.size])
    types_at, strings_at = hdr_len + type_off, hdr_len + str_off
    strings = data[strings_at:strings_at + str_len]
    at = strings.find(b"\0" + name.encode() + b"\0")
    if at < 0:
        return None
    record = re.compile(re.escape(struct.pack("<I", at + 1)) + b"[\\x00-\\xff]{3}"
                        + re.escape(bytes([kind])), re.DOTALL)
    types = memoryview(data)[types_at:types_at + type_len]
    targets = sorted(m.start() for m in record.finditer(data, types_at, types_at + type_len)
                     if (m.start() - types_at) % 4 == 0)
    if not targets:
        return None
    infos = struct.Struct("<I")
    pos, type_id, end = 0, 1, targets[-1] - types_at
    wanted = {t - types_at for t in targets}
    while pos <= end:
        if pos in wanted:
            return type_id
        (info,) = infos.unpack_from(types, pos + 4)
        k = (info >> 24) & 0x1F
        if k in _KIND_PLAIN:
            pos += 12
        else:
            extra = _KIND_EXTRA.get(k)
            if extra is None:
                raise BtfScanError(f"malformed BTF: unknown kind {k} at type {type_id}")
            pos += 12 + extra[0] + extra[1] * (info & 0xFFFF)
        type_id += 1
    return None
