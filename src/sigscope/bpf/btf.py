"""A small, lazy reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``): type ids.

Two BTF readers, for two questions. Member offsets (``task_struct.comm``...) come from the quick
scan of ``sigscope.bpf.btf_scan`` on the start-up path (~1 ms). A *type id* (what a BTF-typed
program's ``attach_btf_id`` names: the typedef ``btf_trace_<event>`` of a tp_btf program, the
FUNC of an fentry target) is a type's ordinal position, so finding one needs the walk over every
type that this parser does (tens of ms: bench/README.md): it is used only where a type id is
needed (feature probes), never on the trace start-up path. It is also the independent oracle
that checks the scan's answers on the running kernel (tests/kernel).

BPF programs that read kernel memory (``bpf_probe_read_kernel`` on a ``task_struct``) need the
byte offsets of struct fields on the *running* kernel. Without compiler-side CO-RE we take them
from the kernel's own type information at run time.

Layouts follow ``include/uapi/linux/btf.h``. vmlinux BTF holds 100k+ types, so loading is one
pass that only records where each type starts, its kind and its name offset; members are decoded
when a struct is asked for, and a name index is built only for STRUCT, UNION, TYPEDEF and ENUM.

    btf = Btf.load()
    btf.member_offset("task_struct", "tgid")          # bytes, anonymous members searched
    btf.member_type_name("task_struct", "signal")     # "signal_struct"
"""

from __future__ import annotations

import ctypes
import struct
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from sigscope.bpf.btf_scan import NO_BTF_ENV, vmlinux_btf_disabled
from sigscope.errors import SetupError

VMLINUX_BTF_PATH = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_HEADER_SIZE = 24  # struct btf_header up to and including str_len

BTF_KIND_UNKN = 0
BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_FLOAT = 16
BTF_KIND_DECL_TAG = 17
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19

KIND_NAMES = {
    BTF_KIND_UNKN: "UNKN",
    BTF_KIND_INT: "INT",
    BTF_KIND_PTR: "PTR",
    BTF_KIND_ARRAY: "ARRAY",
    BTF_KIND_STRUCT: "STRUCT",
    BTF_KIND_UNION: "UNION",
    BTF_KIND_ENUM: "ENUM",
    BTF_KIND_FWD: "FWD",
    BTF_KIND_TYPEDEF: "TYPEDEF",
    BTF_KIND_VOLATILE: "VOLATILE",
    BTF_KIND_CONST: "CONST",
    BTF_KIND_RESTRICT: "RESTRICT",
    BTF_KIND_FUNC: "FUNC",
    BTF_KIND_FUNC_PROTO: "FUNC_PROTO",
    BTF_KIND_VAR: "VAR",
    BTF_KIND_DATASEC: "DATASEC",
    BTF_KIND_FLOAT: "FLOAT",
    BTF_KIND_DECL_TAG: "DECL_TAG",
    BTF_KIND_TYPE_TAG: "TYPE_TAG",
    BTF_KIND_ENUM64: "ENUM64",
}

# Bytes that follow the 12-byte struct btf_type: (fixed, per-vlen-entry).
#   INT: u32 encoding; ARRAY: struct btf_array (12); STRUCT/UNION: btf_member (12) x vlen;
#   ENUM: btf_enum (8) x vlen; FUNC_PROTO: btf_param (8) x vlen; VAR: btf_var (4);
#   DATASEC: btf_var_secinfo (12) x vlen; DECL_TAG: btf_decl_tag (4); ENUM64: btf_enum64 (12)
#   x vlen. FUNC keeps its linkage in vlen and has no trailing data.
_TRAILER: dict[int, tuple[int, int]] = {
    BTF_KIND_INT: (4, 0),
    BTF_KIND_PTR: (0, 0),
    BTF_KIND_ARRAY: (12, 0),
    BTF_KIND_STRUCT: (0, 12),
    BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8),
    BTF_KIND_FWD: (0, 0),
    BTF_KIND_TYPEDEF: (0, 0),
    BTF_KIND_VOLATILE: (0, 0),
    BTF_KIND_CONST: (0, 0),
    BTF_KIND_RESTRICT: (0, 0),
    BTF_KIND_FUNC: (0, 0),
    BTF_KIND_FUNC_PROTO: (0, 8),
    BTF_KIND_VAR: (4, 0),
    BTF_KIND_DATASEC: (0, 12),
    BTF_KIND_FLOAT: (0, 0),
    BTF_KIND_DECL_TAG: (4, 0),
    BTF_KIND_TYPE_TAG: (0, 0),
    BTF_KIND_ENUM64: (0, 12),
}

# Kinds that only qualify or rename another type: followed when resolving a member's type.
_MODIFIER_KINDS = frozenset(
    {BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG}
)
_INDEXED_KINDS = frozenset({BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_TYPEDEF, BTF_KIND_ENUM})
# Kinds whose third u32 is a size rather than a type id.
_SIZED_KINDS = frozenset(
    {
        BTF_KIND_INT,
        BTF_KIND_STRUCT,
        BTF_KIND_UNION,
        BTF_KIND_ENUM,
        BTF_KIND_ENUM64,
        BTF_KIND_DATASEC,
        BTF_KIND_FLOAT,
    }
)
_COMPOSITE_KINDS = frozenset({BTF_KIND_STRUCT, BTF_KIND_UNION})

# A bound on nested type references, so a malformed blob with a reference cycle cannot hang us.
_MAX_RESOLVE_DEPTH = 32
_MAX_ANON_DEPTH = 16


class BtfError(SetupError):
    """A one-line reason the kernel's type information could not give us what was asked."""


@dataclass(frozen=True)
class Member:
    """One struct/union member as declared; ``offset_bits`` is relative to its parent."""

    name: str
    offset_bits: int
    bitfield_size: int  # 0 unless the member is a bitfield
    type_id: int

    @property
    def offset(self) -> int:
        """Byte offset (only meaningful when ``bitfield_size == 0``)."""
        return self.offset_bits // 8


@dataclass(frozen=True)
class Struct:
    """A decoded STRUCT or UNION: ``members`` maps name -> Member (anonymous members are
    listed in ``anonymous`` instead, in declaration order)."""

    type_id: int
    name: str
    kind: int
    size: int
    members: dict[str, Member]
    anonymous: tuple[Member, ...]

    @property
    def is_union(self) -> bool:
        return self.kind == BTF_KIND_UNION


class Btf:
    """Parsed BTF: type locations are known at once, everything else is decoded on demand."""

    def __init__(self, data: bytes | bytearray | memoryview, source: str = "<bytes>") -> None:
        self.source = source
        self._data = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
        started = time.perf_counter()
        self._parse_header()
        self._scan_types()
        self.parse_seconds = time.perf_counter() - started
        self._name_index: dict[str, list[int]] | None = None
        self._structs: dict[int, Struct] = {}

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path = VMLINUX_BTF_PATH) -> Btf:
        """Read and index a BTF file; the kernel's vmlinux BTF is cached per process."""
        path = str(path)
        if path == VMLINUX_BTF_PATH:
            global _vmlinux_cache
            if _vmlinux_cache is None:
                _vmlinux_cache = cls._load_file(path)
            return _vmlinux_cache
        return cls._load_file(path)

    @classmethod
    def _load_file(cls, path: str) -> Btf:
        if path == VMLINUX_BTF_PATH and vmlinux_btf_disabled():
            raise BtfError(f"kernel BTF disabled by {NO_BTF_ENV}: kernel struct offsets "
                           "cannot be read")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if path == VMLINUX_BTF_PATH:
                raise BtfError(
                    f"kernel BTF not found at {path} (CONFIG_DEBUG_INFO_BTF=n): "
                    "kernel struct offsets cannot be read"
                ) from None
            raise BtfError(f"BTF file not found: {path}") from None
        except OSError as e:
            raise BtfError(f"cannot read BTF from {path}: {e.strerror or e}") from None
        return cls(data, source=path)

    def _fail(self, what: str) -> BtfError:
        return BtfError(f"malformed BTF in {self.source}: {what}")

    def _parse_header(self) -> None:
        data = self._data
        if len(data) < BTF_HEADER_SIZE:
            raise self._fail(f"{len(data)} bytes is shorter than the {BTF_HEADER_SIZE}-byte header")
        # The magic is written in the producer's byte order: 9f eb on little-endian machines.
        if bytes(data[0:2]) == b"\x9f\xeb":
            self._endian = "<"
        elif bytes(data[0:2]) == b"\xeb\x9f":
            self._endian = ">"
        else:
            raise self._fail(f"bad magic {bytes(data[0:2]).hex()} (want eb9f)")
        e = self._endian
        (_magic, version, flags, hdr_len, type_off, type_len, str_off, str_len) = (
            struct.unpack_from(e + "HBBIIIII", data, 0)
        )
        if version != BTF_VERSION:
            raise self._fail(f"unsupported version {version}")
        if hdr_len < BTF_HEADER_SIZE or hdr_len > len(data):
            raise self._fail(f"header length {hdr_len} out of range")
        self.version = version
        self.flags = flags
        self.hdr_len = hdr_len
        body = len(data) - hdr_len
        for section, off, length in (("type", type_off, type_len), ("string", str_off, str_len)):
            if off + length > body:
                raise self._fail(
                    f"{section} section [{off}, {off + length}) overruns the {body}-byte body"
                )
        if type_off % 4:
            raise self._fail(f"type section offset {type_off} is not 4-byte aligned")
        if str_len == 0 or data[hdr_len + str_off] != 0:
            raise self._fail("string section does not start with an empty string")
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._strings = bytes(data[hdr_len + str_off : hdr_len + str_off + str_len])

    def _scan_types(self) -> None:
        """One pass over the type section recording (start, info, name_off) per type id."""
        data = self._data
        unpack_from = struct.Struct(self._endian + "III").unpack_from
        trailer = _TRAILER
        pos = self._types_start
        end = self._types_end
        # Type id 0 is void and is not stored; index 0 is a placeholder.
        starts = array("I", [0])
        infos = array("I", [0])
        names = array("I", [0])
        add_start, add_info, add_name = starts.append, infos.append, names.append
        while pos < end:
            if pos + 12 > end:
                raise self._fail(f"type {len(starts)} truncated at byte {pos}")
            name_off, info, _size_or_type = unpack_from(data, pos)
            kind = (info >> 24) & 0x1F
            try:
                fixed, per_entry = trailer[kind]
            except KeyError:
                raise self._fail(f"type {len(starts)} has unknown kind {kind}") from None
            add_start(pos)
            add_info(info)
            add_name(name_off)
            pos += 12 + fixed + per_entry * (info & 0xFFFF)
        if pos != end:
            raise self._fail(f"type {len(starts) - 1} runs past the end of the type section")
        self._starts = starts
        self._infos = infos
        self._name_offs = names
        if max(names) >= len(self._strings):
            bad = next(i for i, n in enumerate(names) if n >= len(self._strings))
            raise self._fail(f"type {bad} name offset {names[bad]} is outside the string section")

    # --- low-level accessors ---------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._starts) - 1

    def _check_id(self, type_id: int) -> None:
        if not 0 < type_id < len(self._starts):
            raise self._fail(f"type id {type_id} out of range (1..{len(self._starts) - 1})")

    def kind(self, type_id: int) -> int:
        if type_id == 0:
            return BTF_KIND_UNKN
        self._check_id(type_id)
        return (self._infos[type_id] >> 24) & 0x1F

    def _vlen(self, type_id: int) -> int:
        return self._infos[type_id] & 0xFFFF

    def _kind_flag(self, type_id: int) -> bool:
        return bool(self._infos[type_id] >> 31)

    def _size_or_type(self, type_id: int) -> int:
        return struct.unpack_from(self._endian + "I", self._data, self._starts[type_id] + 8)[0]

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the string section."""
        if not 0 <= offset < len(self._strings):
            raise self._fail(f"string offset {offset} is outside the string section")
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise self._fail(f"string at offset {offset} is not NUL-terminated")
        return self._strings[offset:end].decode("utf-8", "replace")

    def type_name(self, type_id: int) -> str:
        """The type's own name ("" for anonymous types and void)."""
        if type_id == 0:
            return ""
        self._check_id(type_id)
        return self.string(self._name_offs[type_id])

    def _name_lookup(self) -> dict[str, list[int]]:
        if self._name_index is None:
            index: dict[str, list[int]] = {}
            strings = self._strings
            find = strings.find
            infos, name_offs = self._infos, self._name_offs
            for type_id in range(1, len(infos)):
                name_off = name_offs[type_id]
                if name_off == 0 or (infos[type_id] >> 24) & 0x1F not in _INDEXED_KINDS:
                    continue
                name = strings[name_off : find(b"\0", name_off)].decode("utf-8", "replace")
                index.setdefault(name, []).append(type_id)
            self._name_index = index
        return self._name_index

    def find_type(self, name: str, kinds: frozenset | None = None) -> int | None:
        """Id of the first named STRUCT/UNION/TYPEDEF/ENUM called ``name`` (of ``kinds``)."""
        for type_id in self._name_lookup().get(name, ()):
            if kinds is None or self.kind(type_id) in kinds:
                return type_id
        return None

    def find_func(self, name: str) -> int | None:
        """Id of the FUNC called ``name`` (functions are not in the name index: a linear scan,
        ~30 ms on vmlinux; for feature probes)."""
        wanted = name.encode() + b"\0"
        strings, infos, name_offs = self._strings, self._infos, self._name_offs
        for type_id in range(1, len(infos)):
            if (infos[type_id] >> 24) & 0x1F == BTF_KIND_FUNC:
                off = name_offs[type_id]
                if strings[off:off + len(wanted)] == wanted:
                    return type_id
        return None

    def resolve(self, type_id: int, through_pointers: bool = False) -> int:
        """Follow TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG (and PTR if asked) to a base type."""
        for _ in range(_MAX_RESOLVE_DEPTH):
            kind = self.kind(type_id)
            if kind in _MODIFIER_KINDS or (through_pointers and kind == BTF_KIND_PTR):
                type_id = self._size_or_type(type_id)
            else:
                return type_id
        raise self._fail(f"type reference chain too deep (a cycle?) at type {type_id}")

    def type_size(self, type_id: int) -> int:
        """Size in bytes of a type, resolving typedefs/modifiers and arrays."""
        resolved = self.resolve(type_id)
        kind = self.kind(resolved)
        if kind in _SIZED_KINDS:
            return self._size_or_type(resolved)
        if kind == BTF_KIND_PTR:
            return ctypes.sizeof(ctypes.c_void_p)
        if kind == BTF_KIND_ARRAY:
            elem, _index, nelems = self._array(resolved)
            return nelems * self.type_size(elem)
        raise BtfError(
            f"type {type_id} ({KIND_NAMES.get(kind, kind)} {self.type_name(resolved)!r}) "
            "has no size"
        )

    def _array(self, type_id: int) -> tuple[int, int, int]:
        """(element type, index type, number of elements) of an ARRAY."""
        return struct.unpack_from(self._endian + "III", self._data, self._starts[type_id] + 12)

    def array_length(self, type_id: int) -> int | None:
        """Element count when ``type_id`` resolves to an ARRAY, else None."""
        resolved = self.resolve(type_id)
        if self.kind(resolved) != BTF_KIND_ARRAY:
            return None
        return self._array(resolved)[2]

    def _legacy_int_bitfield(self, type_id: int) -> tuple[int, int]:
        """(extra bit offset, bit count) for a member typed by a bitfield INT (kind_flag=0)."""
        if self.kind(type_id) != BTF_KIND_INT:
            return 0, 0
        size = self._size_or_type(type_id)
        encoding = struct.unpack_from(self._endian + "I", self._data, self._starts[type_id] + 12)[0]
        bits = encoding & 0xFF
        int_offset = (encoding >> 16) & 0xFF
        if int_offset or bits != size * 8:
            return int_offset, bits
        return 0, 0

    # --- structs ---------------------------------------------------------------------------

    def struct_by_id(self, type_id: int) -> Struct:
        """Decode a STRUCT/UNION (typedefs and modifiers are followed)."""
        type_id = self.resolve(type_id)
        cached = self._structs.get(type_id)
        if cached is not None:
            return cached
        kind = self.kind(type_id)
        if kind not in _COMPOSITE_KINDS:
            raise BtfError(
                f"type {type_id} {self.type_name(type_id)!r} is a {KIND_NAMES.get(kind, kind)}, "
                "not a struct or union"
            )
        unpack_from = struct.Struct(self._endian + "III").unpack_from
        bitfields_in_offset = self._kind_flag(type_id)
        members: dict[str, Member] = {}
        anonymous: list[Member] = []
        pos = self._starts[type_id] + 12
        for _ in range(self._vlen(type_id)):
            name_off, member_type, offset = unpack_from(self._data, pos)
            pos += 12
            if bitfields_in_offset:
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                extra, bitfield_size = self._legacy_int_bitfield(member_type)
                bit_offset = offset + extra
            member = Member(self.string(name_off), bit_offset, bitfield_size, member_type)
            if member.name:
                members[member.name] = member
            else:
                anonymous.append(member)
        decoded = Struct(
            type_id,
            self.type_name(type_id),
            kind,
            self._size_or_type(type_id),
            members,
            tuple(anonymous),
        )
        self._structs[type_id] = decoded
        return decoded

    def struct(self, name: str) -> Struct:
        """The struct (or union, or typedef of one) called ``name``."""
        type_id = self.find_type(name, _COMPOSITE_KINDS)
        if type_id is None:
            type_id = self.find_type(name, frozenset({BTF_KIND_TYPEDEF}))
            if type_id is not None and self.kind(self.resolve(type_id)) not in _COMPOSITE_KINDS:
                type_id = None
        if type_id is None:
            raise BtfError(f"struct {name} not found in kernel BTF ({self.source})")
        return self.struct_by_id(type_id)

    def _find_member(self, parent: Struct, field: str, depth: int = 0) -> Member | None:
        """``field`` in ``parent`` or, transparently, in its anonymous struct/union members;
        the returned Member's offset is relative to ``parent``."""
        member = parent.members.get(field)
        if member is not None:
            return member
        if depth >= _MAX_ANON_DEPTH:
            return None
        for anon in parent.anonymous:
            if self.kind(self.resolve(anon.type_id)) not in _COMPOSITE_KINDS:
                continue
            inner = self._find_member(self.struct_by_id(anon.type_id), field, depth + 1)
            if inner is not None:
                return Member(
                    inner.name,
                    anon.offset_bits + inner.offset_bits,
                    inner.bitfield_size,
                    inner.type_id,
                )
        return None

    def member(self, struct_name: str, field: str) -> Member:
        """A member of ``struct_name`` (searching anonymous members), offset from its start."""
        found = self._find_member(self.struct(struct_name), field)
        if found is None:
            raise BtfError(f"struct {struct_name} has no field {field} in kernel BTF")
        return found

    def member_offset(self, struct_name: str, field: str) -> int:
        """Byte offset of ``struct_name.field``; bitfields raise BtfError."""
        found = self.member(struct_name, field)
        if found.bitfield_size or found.offset_bits % 8:
            raise BtfError(
                f"{struct_name}.{field} is a {found.bitfield_size or '?'}-bit bitfield at bit "
                f"{found.offset_bits}: it has no byte offset"
            )
        return found.offset_bits // 8

    def member_size(self, struct_name: str, field: str) -> int:
        """Size in bytes of ``struct_name.field``'s type."""
        return self.type_size(self.member(struct_name, field).type_id)

    def field_path_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted path through embedded (not pointed-to) structs, e.g.
        ``field_path_offset("task_struct", "signal")`` or ``("task_struct", "se.vruntime")``."""
        parts = path.split(".")
        current = self.struct(struct_name)
        total = 0
        walked = struct_name
        for index, field in enumerate(parts):
            found = self._find_member(current, field)
            if found is None:
                raise BtfError(f"struct {walked} has no field {field} in kernel BTF")
            if found.bitfield_size or found.offset_bits % 8:
                raise BtfError(f"{walked}.{field} is a bitfield: it has no byte offset")
            total += found.offset_bits // 8
            walked = f"{walked}.{field}"
            if index + 1 < len(parts):
                target = self.resolve(found.type_id)
                if self.kind(target) not in _COMPOSITE_KINDS:
                    raise BtfError(
                        f"{walked} is a {KIND_NAMES.get(self.kind(target), '?')}, not an embedded "
                        "struct (pointers must be read, not added)"
                    )
                current = self.struct_by_id(target)
        return total

    def member_type_name(self, struct_name: str, field: str) -> str:
        """Name of the type a member has, or points to: through PTR, TYPEDEF, CONST, VOLATILE,
        RESTRICT and TYPE_TAG (``("task_struct", "signal") -> "signal_struct"``)."""
        found = self.member(struct_name, field)
        target = self.resolve(found.type_id, through_pointers=True)
        name = self.type_name(target)
        if not name:
            kind = self.kind(target)
            raise BtfError(
                f"{struct_name}.{field} has an anonymous {KIND_NAMES.get(kind, kind)} type"
            )
        return name


_vmlinux_cache: Btf | None = None


def available(path: str | Path = VMLINUX_BTF_PATH) -> bool:
    """True when the BTF file exists and parses."""
    try:
        Btf.load(path)
    except BtfError:
        return False
    return True
