"""btf_scan on hand-made BTF blobs: found members, spans, bitfields, ambiguity, absence."""

from __future__ import annotations

import struct

import pytest

from sigscope.bpf.btf import BTF_KIND_FWD, BTF_KIND_INT, BTF_KIND_STRUCT
from sigscope.bpf.btf_scan import (
    BtfScanError,
    ScannedMember,
    struct_members,
    vmlinux_struct_members,
)


def blob(types: list[tuple[str, int, int, int, list]], kflag_structs: bool = False) -> bytes:
    """types: (name, kind, vlen, size_or_type, members [(name, type, offset)])."""
    strings = bytearray(b"\0")
    offsets: dict[str, int] = {"": 0}

    def name_off(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    body = bytearray()
    for name, kind, vlen, size, members in types:
        kflag = 1 if kflag_structs and kind == BTF_KIND_STRUCT else 0
        body += struct.pack("<III", name_off(name), kflag << 31 | kind << 24 | vlen, size)
        if kind == BTF_KIND_INT:
            body += struct.pack("<I", 32)
        for mname, mtype, moff in members:
            body += struct.pack("<III", name_off(mname), mtype, moff)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + bytes(body) + bytes(strings)


INT = ("int", BTF_KIND_INT, 0, 4, [])
TASK = ("task_struct", BTF_KIND_STRUCT, 4, 32,
        [("pid", 1, 0), ("tgid", 1, 32), ("", 1, 64), ("comm", 1, 128)])


def test_members_with_offsets_and_spans() -> None:
    found = struct_members(blob([INT, ("task_struct", BTF_KIND_FWD, 0, 0, []), TASK]),
                           "task_struct")
    assert found == {"pid": ScannedMember(0, 4), "tgid": ScannedMember(4, 4),
                     "comm": ScannedMember(16, 16)}


def test_bitfields_are_left_out_and_kflag_offsets_decoded() -> None:
    task = ("task_struct", BTF_KIND_STRUCT, 3, 16,
            [("pid", 1, 0), ("flags", 1, (3 << 24) | 32), ("comm", 1, 64)])
    found = struct_members(blob([INT, task], kflag_structs=True), "task_struct")
    assert set(found) == {"pid", "comm"}
    assert found["pid"] == ScannedMember(0, 4) and found["comm"] == ScannedMember(8, 8)


def test_two_structs_of_one_name_are_refused() -> None:
    with pytest.raises(BtfScanError, match="2 structs named task_struct"):
        struct_members(blob([INT, TASK, TASK]), "task_struct")


def test_missing_struct_and_malformed_blob() -> None:
    with pytest.raises(BtfScanError, match="no struct named cred"):
        struct_members(blob([INT, TASK]), "cred")
    with pytest.raises(BtfScanError):
        struct_members(b"\x9f\xeb\x01", "task_struct")
    with pytest.raises(BtfScanError):
        struct_members(blob([INT, TASK])[:40], "task_struct")


def test_read_from_a_file_in_steps_takes_the_first_struct(tmp_path) -> None:
    # Far enough apart that the second struct is beyond the first 64 KiB read.
    filler = [(f"f{i}", BTF_KIND_STRUCT, 1, 4, [("x", 1, 0)]) for i in range(7000)]
    data = blob([INT, *filler, TASK, ("cred", BTF_KIND_STRUCT, 1, 8, [("uid", 1, 32)])])
    path = tmp_path / "vmlinux"
    path.write_bytes(data)
    found = vmlinux_struct_members("task_struct", "cred", path=str(path))
    assert found["task_struct"] == struct_members(data, "task_struct")
    assert found["cred"] == {"uid": ScannedMember(4, 4)}
    with pytest.raises(BtfScanError, match="no struct named mm_struct"):
        vmlinux_struct_members("mm_struct", path=str(path))
    with pytest.raises(BtfScanError, match="cannot read BTF"):
        vmlinux_struct_members("cred", path=str(tmp_path / "missing"))
