"""btf_scan's quick type ids against the full parser, on a BTF blob built by the tests."""

from __future__ import annotations

import struct

from sigscope.bpf import btf_scan


def _blob(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


def _type(name_off: int, kind: int, vlen: int = 0, size_or_type: int = 0) -> bytes:
    return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)


def test_ids_count_every_record_before_the_named_one() -> None:
    strings = b"\0int\0s\0a\0b\0btf_trace_x\0f\0"
    off = {n: strings.index(b"\0" + n + b"\0") + 1 for n in (b"int", b"s", b"a", b"b",
                                                               b"btf_trace_x", b"f")}
    types = [
        _type(off[b"int"], 1, 0, 4) + struct.pack("<I", 32),                  # 1 INT
        _type(off[b"s"], 4, 2, 8) + struct.pack("<III", off[b"a"], 1, 0)
        + struct.pack("<III", off[b"b"], 1, 32),                              # 2 STRUCT
        _type(0, 13, 1, 1) + struct.pack("<II", 0, 1),                        # 3 FUNC_PROTO
        _type(0, 2, 0, 2),                                                    # 4 PTR
        _type(off[b"btf_trace_x"], 8, 0, 4),                                  # 5 TYPEDEF
        _type(off[b"f"], 12, 1, 3),                                           # 6 FUNC
    ]
    blob = _blob(types, strings)
    assert btf_scan.type_id_in(blob, "btf_trace_x", btf_scan.BTF_KIND_TYPEDEF) == 5
    assert btf_scan.type_id_in(blob, "f", btf_scan.BTF_KIND_FUNC) == 6
    assert btf_scan.type_id_in(blob, "s", btf_scan.BTF_KIND_TYPEDEF) is None  # a STRUCT
    assert btf_scan.type_id_in(blob, "missing", btf_scan.BTF_KIND_TYPEDEF) is None
