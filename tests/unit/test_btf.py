"""BTF reader against small synthetic blobs built by a tiny encoder in this file."""

from __future__ import annotations

import struct

import pytest

from sigscope.bpf import btf as btf_mod
from sigscope.bpf.btf import (
    BTF_KIND_ARRAY,
    BTF_KIND_CONST,
    BTF_KIND_DATASEC,
    BTF_KIND_DECL_TAG,
    BTF_KIND_ENUM,
    BTF_KIND_ENUM64,
    BTF_KIND_FLOAT,
    BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO,
    BTF_KIND_FWD,
    BTF_KIND_INT,
    BTF_KIND_PTR,
    BTF_KIND_STRUCT,
    BTF_KIND_TYPE_TAG,
    BTF_KIND_TYPEDEF,
    BTF_KIND_UNION,
    BTF_KIND_VAR,
    BTF_KIND_VOLATILE,
    Btf,
    BtfError,
    Member,
)


class Encoder:
    """Builds a BTF blob type by type; methods return the new type id."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.strings = bytearray(b"\0")
        self.string_offsets: dict[str, int] = {"": 0}
        self.types = bytearray()
        self.next_id = 1

    def name(self, text: str) -> int:
        if text not in self.string_offsets:
            self.string_offsets[text] = len(self.strings)
            self.strings += text.encode() + b"\0"
        return self.string_offsets[text]

    def _u32(self, *values: int) -> bytes:
        return struct.pack(self.endian + f"{len(values)}I", *(v & 0xFFFFFFFF for v in values))

    def add(
        self,
        kind: int,
        name: str,
        size_or_type: int,
        vlen: int = 0,
        kind_flag: int = 0,
        trailer: bytes = b"",
    ) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += self._u32(self.name(name), info, size_or_type) + trailer
        type_id = self.next_id
        self.next_id += 1
        return type_id

    def int_(
        self,
        name: str,
        size: int,
        bits: int | None = None,
        bit_offset: int = 0,
        signed: bool = True,
    ) -> int:
        width = bits if bits is not None else size * 8
        encoding = (int(signed) << 24) | (bit_offset << 16) | width
        return self.add(BTF_KIND_INT, name, size, trailer=self._u32(encoding))

    def ptr(self, target: int) -> int:
        return self.add(BTF_KIND_PTR, "", target)

    def array(self, elem: int, index: int, count: int) -> int:
        return self.add(BTF_KIND_ARRAY, "", 0, trailer=self._u32(elem, index, count))

    def composite(self, kind: int, name: str, size: int, members: list, kind_flag: int = 0) -> int:
        """members: (name, type_id, bit_offset, bitfield_size)."""
        trailer = b"".join(
            self._u32(self.name(m_name), m_type, (bf << 24 | off) if kind_flag else off)
            for m_name, m_type, off, bf in members
        )
        return self.add(kind, name, size, vlen=len(members), kind_flag=kind_flag, trailer=trailer)

    def enum(self, name: str, values: dict) -> int:
        trailer = b"".join(self._u32(self.name(k), v) for k, v in values.items())
        return self.add(BTF_KIND_ENUM, name, 4, vlen=len(values), trailer=trailer)

    def enum64(self, name: str, values: dict) -> int:
        trailer = b"".join(
            self._u32(self.name(k), v & 0xFFFFFFFF, v >> 32) for k, v in values.items()
        )
        return self.add(BTF_KIND_ENUM64, name, 8, vlen=len(values), trailer=trailer)

    def func_proto(self, ret: int, params: list) -> int:
        trailer = b"".join(self._u32(self.name(n), t) for n, t in params)
        return self.add(BTF_KIND_FUNC_PROTO, "", ret, vlen=len(params), trailer=trailer)

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self.add(BTF_KIND_VAR, name, type_id, trailer=self._u32(linkage))

    def datasec(self, name: str, size: int, vars_: list) -> int:
        trailer = b"".join(self._u32(t, off, sz) for t, off, sz in vars_)
        return self.add(BTF_KIND_DATASEC, name, size, vlen=len(vars_), trailer=trailer)

    def blob(self, hdr_len: int = 24) -> bytes:
        magic = struct.pack(self.endian + "HBB", 0xEB9F, 1, 0)
        rest = self._u32(hdr_len, 0, len(self.types), len(self.types), len(self.strings))
        padding = b"\0" * (hdr_len - 24)
        return magic + rest + padding + bytes(self.types) + bytes(self.strings)


def build_sample(endian: str = "<", kind_flag: int = 1) -> tuple[bytes, dict[str, int]]:
    """A small kernel-like world: task { pid; tgid; union {...}; bitfields; sig *; comm[16] }."""
    e = Encoder(endian)
    ids: dict[str, int] = {}
    ids["int"] = e.int_("int", 4)
    ids["char"] = e.int_("char", 1, signed=False)
    ids["uint"] = e.int_("unsigned int", 4, signed=False)
    ids["long"] = e.int_("long", 8)
    ids["pid_t"] = e.add(BTF_KIND_TYPEDEF, "pid_t", ids["int"])
    ids["signal_struct"] = e.composite(
        BTF_KIND_STRUCT,
        "signal_struct",
        24,
        [
            ("flags", ids["uint"], 0, 0),
            ("group_exit_code", ids["int"], 32, 0),
            ("pad", ids["long"], 64, 0),
            ("more", ids["long"], 128, 0),
        ],
    )
    ids["fwd"] = e.add(BTF_KIND_FWD, "opaque", 0)
    ids["const_sig"] = e.add(BTF_KIND_CONST, "", ids["signal_struct"])
    ids["volatile_sig"] = e.add(BTF_KIND_VOLATILE, "", ids["const_sig"])
    ids["tagged_sig"] = e.add(BTF_KIND_TYPE_TAG, "rcu", ids["volatile_sig"])
    ids["sig_ptr"] = e.ptr(ids["tagged_sig"])
    ids["sig_t"] = e.add(BTF_KIND_TYPEDEF, "sig_t", ids["sig_ptr"])
    ids["comm"] = e.array(ids["char"], ids["int"], 16)
    ids["inner_struct"] = e.composite(
        BTF_KIND_STRUCT,
        "",
        8,
        [("deep_a", ids["int"], 0, 0), ("deep_b", ids["int"], 32, 0)],
    )
    ids["anon_union"] = e.composite(
        BTF_KIND_UNION,
        "",
        8,
        [("ua", ids["long"], 0, 0), ("ub", ids["int"], 0, 0), ("", ids["inner_struct"], 0, 0)],
    )
    if kind_flag:
        bitfields = [("bf_lo", ids["uint"], 448, 3), ("bf_hi", ids["uint"], 451, 5)]
    else:
        # Legacy encoding: the bitfield width lives in a dedicated INT type.
        bf3 = e.int_("unsigned int", 4, bits=3, signed=False)
        bf5 = e.int_("unsigned int", 4, bits=5, signed=False)
        bitfields = [("bf_lo", bf3, 448, 0), ("bf_hi", bf5, 451, 0)]
    ids["task_struct"] = e.composite(
        BTF_KIND_STRUCT,
        "task_struct",
        96,
        [
            ("state", ids["uint"], 0, 0),
            ("pid", ids["pid_t"], 32, 0),
            ("tgid", ids["pid_t"], 64, 0),
            ("", ids["anon_union"], 128, 0),
            ("signal", ids["sig_t"], 192, 0),
            ("comm", ids["comm"], 256, 0),
            ("opaque", e.ptr(ids["fwd"]), 384, 0),
            *bitfields,
            ("embedded", ids["signal_struct"], 512, 0),
            ("anon_ptr", e.ptr(ids["anon_union"]), 704, 0),
        ],
        kind_flag=kind_flag,
    )
    ids["task_t"] = e.add(BTF_KIND_TYPEDEF, "task_t", ids["task_struct"])
    ids["color"] = e.enum("color", {"RED": 0, "GREEN": 1, "BLUE": -1})
    ids["big"] = e.enum64("big", {"HUGE": 1 << 40})
    ids["float"] = e.add(BTF_KIND_FLOAT, "double", 8)
    task_ptr = e.ptr(ids["task_struct"])
    ids["proto"] = e.func_proto(ids["int"], [("task", task_ptr), ("sig", ids["int"])])
    ids["func"] = e.add(BTF_KIND_FUNC, "do_send_sig", ids["proto"], vlen=1)
    ids["decl_tag"] = e.add(BTF_KIND_DECL_TAG, "tag", ids["func"], trailer=e._u32(0xFFFFFFFF))
    ids["var"] = e.var("jiffies", ids["long"])
    ids["datasec"] = e.datasec(".data", 8, [(ids["var"], 0, 8)])
    ids["last"] = e.int_("last_int", 2)
    return e.blob(), ids


@pytest.fixture(params=["<", ">"], ids=["little", "big"])
def sample(request):
    data, ids = build_sample(request.param)
    return Btf(data, source="sample"), ids


def test_every_kind_is_skipped_correctly(sample):
    btf, ids = sample
    assert btf.type_count == ids["last"]
    assert btf.type_name(ids["last"]) == "last_int"  # the scan stayed in step through every kind
    assert btf.kind(ids["datasec"]) == BTF_KIND_DATASEC
    assert btf.kind(ids["big"]) == BTF_KIND_ENUM64
    assert btf.type_size(ids["last"]) == 2


def test_member_offsets_and_struct(sample):
    btf, _ = sample
    task = btf.struct("task_struct")
    assert task.size == 96
    assert btf.member_offset("task_struct", "pid") == 4
    assert btf.member_offset("task_struct", "tgid") == 8
    assert btf.member_offset("task_struct", "comm") == 32
    assert task.members["tgid"] == Member("tgid", 64, 0, task.members["tgid"].type_id)
    assert btf.member_size("task_struct", "comm") == 16
    assert btf.array_length(task.members["comm"].type_id) == 16
    assert btf.member_size("task_struct", "pid") == 4  # through the pid_t typedef
    assert btf.struct("task_t") is task  # typedef of a struct


def test_nested_anonymous_members_add_offsets(sample):
    btf, _ = sample
    assert btf.member_offset("task_struct", "ua") == 16
    assert btf.member_offset("task_struct", "ub") == 16
    # anonymous struct inside the anonymous union: 16 + 4
    assert btf.member_offset("task_struct", "deep_b") == 20
    assert btf.member("task_struct", "deep_b").offset_bits == 160


def test_bitfields_are_refused_with_one_line(sample):
    btf, _ = sample
    member = btf.member("task_struct", "bf_hi")
    assert (member.offset_bits, member.bitfield_size) == (451, 5)
    with pytest.raises(BtfError) as info:
        btf.member_offset("task_struct", "bf_hi")
    message = str(info.value)
    assert "task_struct.bf_hi" in message and "bitfield" in message and "\n" not in message


def test_legacy_int_bitfield_encoding():
    data, _ = build_sample(kind_flag=0)
    btf = Btf(data)
    assert btf.member("task_struct", "bf_lo").bitfield_size == 3
    assert btf.member("task_struct", "bf_hi").bitfield_size == 5
    with pytest.raises(BtfError, match="bitfield"):
        btf.member_offset("task_struct", "bf_lo")
    assert btf.member_offset("task_struct", "tgid") == 8  # ordinary members unaffected


def test_missing_names_raise_clear_errors(sample):
    btf, _ = sample
    with pytest.raises(BtfError, match=r"^struct task_struct has no field nope in kernel BTF$"):
        btf.member_offset("task_struct", "nope")
    with pytest.raises(BtfError, match=r"^struct no_such_struct not found"):
        btf.struct("no_such_struct")
    with pytest.raises(BtfError, match="not a struct"):
        btf.struct_by_id(btf.find_type("color"))


def test_pointer_resolution(sample):
    btf, _ = sample
    # typedef -> PTR -> TYPE_TAG -> VOLATILE -> CONST -> struct
    assert btf.member_type_name("task_struct", "signal") == "signal_struct"
    assert btf.member_type_name("task_struct", "opaque") == "opaque"  # FWD
    assert btf.member_type_name("task_struct", "pid") == "int"
    assert btf.member_size("task_struct", "signal") == 8
    with pytest.raises(BtfError, match="task_struct.anon_ptr has an anonymous UNION type"):
        btf.member_type_name("task_struct", "anon_ptr")


def test_field_path_offset(sample):
    btf, _ = sample
    assert btf.field_path_offset("task_struct", "signal") == 24
    assert btf.field_path_offset("task_struct", "embedded.group_exit_code") == 64 + 4
    assert btf.field_path_offset("task_struct", "deep_a") == 16
    with pytest.raises(BtfError, match="not an embedded struct"):
        btf.field_path_offset("task_struct", "signal.flags")
    with pytest.raises(BtfError, match="task_struct.embedded has no field zz"):
        btf.field_path_offset("task_struct", "embedded.zz")


def test_type_size_kinds(sample):
    btf, ids = sample
    assert btf.type_size(ids["signal_struct"]) == 24
    assert btf.type_size(ids["sig_t"]) == 8
    assert btf.type_size(ids["comm"]) == 16
    assert btf.type_size(ids["color"]) == 4
    assert btf.type_size(ids["big"]) == 8
    assert btf.type_size(ids["float"]) == 8
    with pytest.raises(BtfError, match="has no size"):
        btf.type_size(ids["func"])


def test_header_with_longer_hdr_len():
    e = Encoder()
    e.int_("int", 4)
    btf = Btf(e.blob(hdr_len=32))
    assert btf.type_name(1) == "int" and btf.hdr_len == 32


def corrupt(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda d: d[:10], "shorter than the 24-byte header"),
        (lambda d: b"\x12\x34" + d[2:], "bad magic"),
        (lambda d: corrupt(d, 2, "B", 2), "unsupported version 2"),
        (lambda d: corrupt(d, 4, "I", 8), "header length 8"),
        (lambda d: corrupt(d, 12, "I", 1 << 20), "type section"),
        (lambda d: corrupt(d, 20, "I", 1 << 20), "string section"),
        (
            lambda d: corrupt(d, 12, "I", struct.unpack_from("<I", d, 12)[0] - 4),
            "runs past the end|truncated",
        ),
        (lambda d: corrupt(d, 24 + 4, "I", 31 << 24), "unknown kind 31"),
        (lambda d: corrupt(d, 24, "I", 1 << 20), "name offset"),
    ],
    ids=[
        "short",
        "magic",
        "version",
        "hdr_len",
        "type_len",
        "str_len",
        "truncated",
        "kind",
        "name_off",
    ],
)
def test_malformed_blobs_raise_btf_error(mangle, reason):
    data, _ = build_sample()
    with pytest.raises(BtfError, match=reason) as info:
        Btf(mangle(data), source="blob")
    assert "\n" not in str(info.value) and "blob" in str(info.value)


def test_bad_type_reference_is_a_btf_error():
    e = Encoder()
    e.add(BTF_KIND_TYPEDEF, "dangling", 99)
    btf = Btf(e.blob())
    with pytest.raises(BtfError, match="type id 99 out of range"):
        btf.type_size(1)


def test_reference_cycle_is_a_btf_error():
    e = Encoder()
    e.add(BTF_KIND_TYPEDEF, "a", 2)
    e.add(BTF_KIND_TYPEDEF, "b", 1)
    with pytest.raises(BtfError, match="cycle"):
        Btf(e.blob()).type_size(1)


def test_missing_file_and_available(tmp_path, monkeypatch):
    with pytest.raises(BtfError, match="not found"):
        Btf.load(tmp_path / "nothing")
    assert not btf_mod.available(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 40)
    assert not btf_mod.available(bad)
    good = tmp_path / "good"
    good.write_bytes(build_sample()[0])
    assert btf_mod.available(good)
    assert Btf.load(good).member_offset("task_struct", "tgid") == 8


def test_vmlinux_missing_message(monkeypatch):
    monkeypatch.setattr(btf_mod, "_vmlinux_cache", None)
    real_open = open

    def fake_open(path, *args, **kwargs):
        if str(path) == btf_mod.VMLINUX_BTF_PATH:
            raise FileNotFoundError(2, "No such file")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(BtfError) as info:
        Btf.load()
    assert str(info.value).startswith(
        "kernel BTF not found at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=n)"
    )
    assert not btf_mod.available()
