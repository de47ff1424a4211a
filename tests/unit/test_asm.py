"""Golden encodings for the eBPF assembler.

Every expected hex string below was written by hand from the UAPI opcode constants
(include/uapi/linux/bpf_common.h, bpf.h): code = class | size/op | mode/source, then the regs
byte (src << 4 | dst), s16 off and s32 imm little-endian.  They are deliberately literals, not
computed, so an encoding mistake in asm.py cannot cancel itself out here.

Conventions used in the tables: dst = r1, src = r2, K-form imm = 7 (regs 0x01, imm 07000000),
X-form regs 0x21; jumps with K go +2 (0200), jumps with X go -3 (fdff).
"""

from __future__ import annotations

import re

import pytest

from sigscope.bpf import asm
from sigscope.bpf.asm import (
    ADD,
    AND,
    ARSH,
    DIV,
    DW,
    HELPERS,
    JEQ,
    JGE,
    JGT,
    JLE,
    JLT,
    JNE,
    JSET,
    JSGE,
    JSGT,
    JSLE,
    JSLT,
    LSH,
    MOD,
    MOV,
    MUL,
    NEG,
    OR,
    R0,
    R1,
    R2,
    R6,
    R10,
    RSH,
    SUB,
    XOR,
    AsmError,
    B,
    H,
    Insn,
    W,
)


def hexof(insns) -> str:
    return asm.assemble(insns).hex()


# --- ALU ---------------------------------------------------------------------------------

# op: (ALU64|K, ALU64|X, ALU|K, ALU|X); NEG uses imm 0 in the K form.
ALU_GOLDEN = {
    ADD: ("0701000007000000", "0f21000000000000", "0401000007000000", "0c21000000000000"),
    SUB: ("1701000007000000", "1f21000000000000", "1401000007000000", "1c21000000000000"),
    MUL: ("2701000007000000", "2f21000000000000", "2401000007000000", "2c21000000000000"),
    DIV: ("3701000007000000", "3f21000000000000", "3401000007000000", "3c21000000000000"),
    OR: ("4701000007000000", "4f21000000000000", "4401000007000000", "4c21000000000000"),
    AND: ("5701000007000000", "5f21000000000000", "5401000007000000", "5c21000000000000"),
    LSH: ("6701000007000000", "6f21000000000000", "6401000007000000", "6c21000000000000"),
    RSH: ("7701000007000000", "7f21000000000000", "7401000007000000", "7c21000000000000"),
    NEG: ("8701000000000000", "8f21000000000000", "8401000000000000", "8c21000000000000"),
    MOD: ("9701000007000000", "9f21000000000000", "9401000007000000", "9c21000000000000"),
    XOR: ("a701000007000000", "af21000000000000", "a401000007000000", "ac21000000000000"),
    MOV: ("b701000007000000", "bf21000000000000", "b401000007000000", "bc21000000000000"),
    ARSH: ("c701000007000000", "cf21000000000000", "c401000007000000", "cc21000000000000"),
}


@pytest.mark.parametrize("op", list(ALU_GOLDEN), ids=lambda op: f"op{op:#04x}")
def test_alu_golden(op):
    imm = 0 if op == NEG else 7
    k64, x64, k32, x32 = ALU_GOLDEN[op]
    assert hexof(asm.alu64_imm(op, R1, imm)) == k64
    assert hexof(asm.alu64_reg(op, R1, R2)) == x64
    assert hexof(asm.alu32_imm(op, R1, imm)) == k32
    assert hexof(asm.alu32_reg(op, R1, R2)) == x32


def test_alu_shorthands_and_op_names():
    assert hexof(asm.mov64_imm(R0, 0)) == "b700000000000000"
    assert hexof(asm.mov64_imm(R0, -1)) == "b7000000ffffffff"
    assert hexof(asm.mov64_reg(R6, R1)) == "bf16000000000000"
    assert hexof(asm.mov32_imm(R1, 0x7FFFFFFF)) == "b4010000ffffff7f"
    assert hexof(asm.mov32_reg(R1, R2)) == "bc21000000000000"
    assert hexof(asm.neg64(R1)) == "8701000000000000"
    assert hexof(asm.neg32(R1)) == "8401000000000000"
    assert asm.alu64_imm("add", R1, 7) == asm.alu64_imm(ADD, R1, 7)
    assert asm.jmp_imm("jne", R1, 7, 2) == asm.jmp_imm(JNE, R1, 7, 2)


def test_byte_swap_golden():
    # BPF_ALU | BPF_END | BPF_TO_BE = 0xdc, | BPF_TO_LE = 0xd4; imm is the width.
    assert hexof(asm.to_be(R1, 16)) == "dc01000010000000"
    assert hexof(asm.to_be(R1, 32)) == "dc01000020000000"
    assert hexof(asm.to_be(R1, 64)) == "dc01000040000000"
    assert hexof(asm.to_le(R1, 16)) == "d401000010000000"
    assert hexof(asm.to_le(R1, 32)) == "d401000020000000"
    assert hexof(asm.to_le(R1, 64)) == "d401000040000000"
    # BPF_ALU64 | BPF_END: unconditional bswap
    assert hexof(asm.bswap(R1, 16)) == "d701000010000000"
    with pytest.raises(AsmError):
        asm.to_be(R1, 8)


# --- jumps -------------------------------------------------------------------------------

# op: (JMP|K, JMP|X, JMP32|K, JMP32|X)
JMP_GOLDEN = {
    JEQ: ("1501020007000000", "1d21fdff00000000", "1601020007000000", "1e21fdff00000000"),
    JGT: ("2501020007000000", "2d21fdff00000000", "2601020007000000", "2e21fdff00000000"),
    JGE: ("3501020007000000", "3d21fdff00000000", "3601020007000000", "3e21fdff00000000"),
    JSET: ("4501020007000000", "4d21fdff00000000", "4601020007000000", "4e21fdff00000000"),
    JNE: ("5501020007000000", "5d21fdff00000000", "5601020007000000", "5e21fdff00000000"),
    JSGT: ("6501020007000000", "6d21fdff00000000", "6601020007000000", "6e21fdff00000000"),
    JSGE: ("7501020007000000", "7d21fdff00000000", "7601020007000000", "7e21fdff00000000"),
    JLT: ("a501020007000000", "ad21fdff00000000", "a601020007000000", "ae21fdff00000000"),
    JLE: ("b501020007000000", "bd21fdff00000000", "b601020007000000", "be21fdff00000000"),
    JSLT: ("c501020007000000", "cd21fdff00000000", "c601020007000000", "ce21fdff00000000"),
    JSLE: ("d501020007000000", "dd21fdff00000000", "d601020007000000", "de21fdff00000000"),
}


@pytest.mark.parametrize("op", list(JMP_GOLDEN), ids=lambda op: f"op{op:#04x}")
def test_jmp_golden(op):
    k64, x64, k32, x32 = JMP_GOLDEN[op]
    assert hexof(asm.jmp_imm(op, R1, 7, 2)) == k64
    assert hexof(asm.jmp_reg(op, R1, R2, -3)) == x64
    assert hexof(asm.jmp32_imm(op, R1, 7, 2)) == k32
    assert hexof(asm.jmp32_reg(op, R1, R2, -3)) == x32


def test_ja_call_exit_golden():
    assert hexof(asm.ja(4)) == "0500040000000000"
    assert hexof(asm.call("ringbuf_reserve")) == "8500000083000000"  # 131
    assert hexof(asm.call(14)) == "850000000e000000"
    assert hexof(asm.exit_()) == "9500000000000000"


# --- memory ------------------------------------------------------------------------------

def test_ldx_golden():
    # BPF_LDX | size | BPF_MEM: B 0x71, H 0x69, W 0x61, DW 0x79; r1 = *(size *)(r6 + 8)
    assert hexof(asm.ldx(B, R1, R6, 8)) == "7161080000000000"
    assert hexof(asm.ldx(H, R1, R6, 8)) == "6961080000000000"
    assert hexof(asm.ldx(W, R1, R6, 8)) == "6161080000000000"
    assert hexof(asm.ldx(DW, R1, R6, 8)) == "7961080000000000"


def test_stx_golden():
    # BPF_STX | size | BPF_MEM: B 0x73, H 0x6b, W 0x63, DW 0x7b; *(size *)(r10 - 8) = r1
    assert hexof(asm.stx(B, R10, R1, -8)) == "731af8ff00000000"
    assert hexof(asm.stx(H, R10, R1, -8)) == "6b1af8ff00000000"
    assert hexof(asm.stx(W, R10, R1, -8)) == "631af8ff00000000"
    assert hexof(asm.stx(DW, R10, R1, -8)) == "7b1af8ff00000000"


def test_st_golden():
    # BPF_ST | size | BPF_MEM: B 0x72, H 0x6a, W 0x62, DW 0x7a; *(size *)(r10 - 4) = 42
    assert hexof(asm.st(B, R10, -4, 42)) == "720afcff2a000000"
    assert hexof(asm.st(H, R10, -4, 42)) == "6a0afcff2a000000"
    assert hexof(asm.st(W, R10, -4, 42)) == "620afcff2a000000"
    assert hexof(asm.st(DW, R10, -4, 42)) == "7a0afcff2a000000"


def test_atomic_golden():
    # BPF_STX | W | BPF_ATOMIC = 0xc3, | DW = 0xdb; imm = BPF_ADD (0), | BPF_FETCH (1)
    assert hexof(asm.atomic_add(W, R10, R1, -8)) == "c31af8ff00000000"
    assert hexof(asm.atomic_add(DW, R10, R1, -8)) == "db1af8ff00000000"
    assert hexof(asm.atomic_add(DW, R10, R1, -8, fetch=True)) == "db1af8ff01000000"
    assert hexof(asm.atomic_op(DW, "or", R10, R1, -8)) == "db1af8ff40000000"
    assert hexof(asm.atomic_op(W, "xchg", R10, R1, -8)) == "c31af8ffe1000000"
    assert hexof(asm.atomic_op(DW, "cmpxchg", R10, R1, -8)) == "db1af8fff1000000"
    with pytest.raises(AsmError):
        asm.atomic_add(B, R10, R1, -8)


# --- 64-bit immediates -------------------------------------------------------------------

def test_ld_imm64_golden():
    # BPF_LD | BPF_DW | BPF_IMM = 0x18; second slot code 0 with the upper 32 bits.
    assert hexof(asm.ld_imm64(R2, 0x1122334455667788)) == "1802000088776655" "0000000044332211"
    assert hexof(asm.ld_imm64(R2, -1)) == "18020000ffffffff" "00000000ffffffff"
    assert hexof(asm.ld_imm64(R2, 0xFFFFFFFFFFFFFFFF)) == "18020000ffffffff" "00000000ffffffff"
    assert hexof(asm.ld_imm64(R2, 0x80000000)) == "1802000000000080" "0000000000000000"
    assert len(asm.ld_imm64(R2, 1)) == 2
    with pytest.raises(AsmError):
        asm.ld_imm64(R2, 1 << 64)


def test_map_loads_golden():
    # src = BPF_PSEUDO_MAP_FD (1), imm = fd
    assert hexof(asm.ld_map_fd(R1, 5)) == "1811000005000000" "0000000000000000"
    # src = BPF_PSEUDO_MAP_VALUE (2), imm = fd, second imm = offset into the value
    assert hexof(asm.ld_map_value(R1, 5, 16)) == "1821000005000000" "0000000010000000"


# --- labels ------------------------------------------------------------------------------

def test_label_forward():
    prog = [asm.jmp_imm(JEQ, R1, 0, "end"), asm.mov64_imm(R0, 1), asm.label("end"), asm.exit_()]
    assert hexof(prog) == "1501010000000000" "b700000001000000" "9500000000000000"


def test_label_backward():
    prog = [asm.label("top"), asm.mov64_imm(R0, 1), asm.ja("top")]
    # ja at slot 1 to slot 0: off = 0 - 2 = -2
    assert hexof(prog) == "b700000001000000" "0500feff00000000"


def test_label_across_ld_imm64_counts_two_slots():
    forward = [asm.jmp_imm(JEQ, R1, 0, "end"), asm.ld_imm64(R2, 1), asm.label("end"),
               asm.exit_()]
    assert asm.assemble(forward)[:8].hex() == "1501020000000000"  # skips 2 slots
    backward = [asm.label("top"), asm.ld_imm64(R2, 1), asm.jmp_reg(JNE, R1, R2, "top")]
    assert asm.assemble(backward)[16:].hex() == "5d21fdff00000000"  # slot 2 -> 0: -3


def test_nested_lists_and_generators_are_flattened():
    body = [[asm.mov64_imm(R0, 0)], (asm.mov64_imm(R0, i) for i in range(2)), [[asm.exit_()]]]
    assert hexof(body) == ("b700000000000000" "b700000000000000" "b700000001000000"
                           "9500000000000000")


def test_unknown_label():
    with pytest.raises(AsmError, match="unknown label 'nowhere'"):
        asm.assemble([asm.ja("nowhere"), asm.exit_()])


def test_duplicate_label():
    with pytest.raises(AsmError, match="duplicate label 'x'"):
        asm.assemble([asm.label("x"), asm.exit_(), asm.label("x"), asm.exit_()])


def test_jump_offset_range():
    filler = [asm.mov64_imm(R0, 0)] * 32767
    ok = asm.assemble([asm.ja("far"), filler, asm.label("far"), asm.exit_()])
    assert ok[:8].hex() == "0500ff7f00000000"
    with pytest.raises(AsmError, match="s16"):
        asm.assemble([asm.ja("far"), filler, asm.mov64_imm(R0, 0), asm.label("far"),
                      asm.exit_()])
    with pytest.raises(AsmError, match="s16"):
        asm.ldx(W, R1, R6, 1 << 15)


def test_bad_register():
    with pytest.raises(AsmError, match="register"):
        asm.mov64_reg(R1, 11)
    with pytest.raises(AsmError, match="register"):
        asm.ldx(W, -1, R6, 0)
    # Insn values built by hand are checked when assembled
    with pytest.raises(AsmError, match="register"):
        asm.assemble([Insn(0xBF, dst=11, src=1)])


def test_bad_immediate():
    with pytest.raises(AsmError, match="s32"):
        asm.mov64_imm(R1, 1 << 31)
    with pytest.raises(AsmError, match="s32"):
        asm.st(W, R10, -4, -(1 << 31) - 1)
    with pytest.raises(AsmError, match="s32"):
        asm.assemble([Insn(0xB7, dst=1, imm=1 << 32)])
    with pytest.raises(AsmError, match="imm must be an int"):
        asm.assemble([Insn(0xB7, dst=1, imm=1.5)])
    assert hexof(asm.mov64_imm(R1, -(1 << 31))) == "b701000000000080"


def test_target_on_non_jump_is_rejected():
    with pytest.raises(AsmError):
        asm.assemble([Insn(0xB7, dst=1, target="x"), asm.label("x"), asm.exit_()])


# --- helpers -----------------------------------------------------------------------------

def test_helper_ids():
    expected = {
        "map_lookup_elem": 1, "map_update_elem": 2, "map_delete_elem": 3, "probe_read": 4,
        "ktime_get_ns": 5, "trace_printk": 6, "get_smp_processor_id": 8,
        "get_current_pid_tgid": 14, "get_current_uid_gid": 15, "get_current_comm": 16,
        "perf_event_output": 25, "get_stackid": 27, "get_current_task": 35,
        "probe_read_str": 45, "get_current_cgroup_id": 80, "send_signal": 109,
        "probe_read_user": 112, "probe_read_kernel": 113, "probe_read_user_str": 114,
        "probe_read_kernel_str": 115, "ktime_get_boot_ns": 125, "ringbuf_output": 130,
        "ringbuf_reserve": 131, "ringbuf_submit": 132, "ringbuf_discard": 133,
        "ringbuf_query": 134, "get_task_stack": 141, "get_current_task_btf": 158,
        "ktime_get_coarse_ns": 160, "get_func_ip": 173, "get_attach_cookie": 174,
        "loop": 181, "ktime_get_tai_ns": 208, "cgrp_storage_delete": 211,
    }
    for name, helper_id in expected.items():
        assert HELPERS[name] == helper_id, name
    assert len(HELPERS) == 211
    assert sorted(HELPERS.values()) == list(range(1, 212))
    assert "unspec" not in HELPERS


def test_call_by_name_with_and_without_prefix():
    assert asm.call("ringbuf_reserve") == asm.call("bpf_ringbuf_reserve") == asm.call(131)
    assert asm.call("bpf_get_current_pid_tgid").imm == 14
    assert asm.helper_name(131) == "bpf_ringbuf_reserve"
    assert asm.helper_name(9999) is None


def test_unknown_helper():
    with pytest.raises(AsmError) as excinfo:
        asm.call("bpf_no_such_helper")
    message = str(excinfo.value)
    assert "bpf_no_such_helper" in message
    assert "\n" not in message and len(message) < 80


# --- dump and disassemble ----------------------------------------------------------------

SMALL_PROGRAM = [
    asm.mov64_reg(R6, R1),
    asm.ld_map_fd(R1, 5),
    asm.mov64_imm(R2, 16),
    asm.mov64_imm(asm.R3, 0),
    asm.call("ringbuf_reserve"),
    asm.jmp_imm(JEQ, R0, 0, "out"),
    asm.ldx(W, R1, R6, 8),
    asm.stx(W, R0, R1, 0),
    asm.st(DW, R10, -8, -1),
    asm.alu64_imm(ADD, R1, -4),
    asm.alu32_reg(asm.LSH, R1, R2),
    asm.neg64(R1),
    asm.to_be(R1, 16),
    asm.jmp32_reg(JSGT, R1, R2, "out"),
    asm.jmp_imm(JNE, R1, -1, "out"),
    asm.ld_imm64(R2, 0x100000000),
    asm.ld_map_value(asm.R3, 6, 24),
    asm.atomic_add(DW, R10, R1, -8),
    asm.atomic_add(W, R10, R1, -8, fetch=True),
    asm.mov64_reg(R1, R0),
    asm.mov64_imm(R2, 0),
    asm.call("bpf_ringbuf_submit"),
    asm.label("out"),
    asm.mov64_imm(R0, 0),
    asm.ja("end"),
    asm.label("end"),
    asm.exit_(),
]

SMALL_PROGRAM_DUMP = """\
   0: r6 = r1
   1: r1 = map[fd:5]
   3: r2 = 16
   4: r3 = 0
   5: call bpf_ringbuf_reserve#131
   6: if r0 == 0x0 goto +18 <out>
   7: r1 = *(u32 *)(r6 +8)
   8: *(u32 *)(r0 +0) = r1
   9: *(u64 *)(r10 -8) = -1
  10: r1 += -4
  11: w1 <<= w2
  12: r1 = -r1
  13: r1 = be16 r1
  14: if w1 s> w2 goto +10 <out>
  15: if r1 != -0x1 goto +9 <out>
  16: r2 = 0x100000000 ll
  18: r3 = map[fd:6][0]+24
  20: lock *(u64 *)(r10 -8) += r1
  21: r1 = atomic_fetch_add((u32 *)(r10 -8), r1)
  22: r1 = r0
  23: r2 = 0
  24: call bpf_ringbuf_submit#132
out:
  25: r0 = 0
  26: goto +0 <end>
end:
  27: exit"""


def test_dump_small_program():
    assert asm.dump(SMALL_PROGRAM) == SMALL_PROGRAM_DUMP


def test_dump_of_bytes_matches_without_label_names():
    # bytes carry no label names: same listing without label lines and <name> annotations
    expected = "\n".join(
        re.sub(r" <\w+>$", "", line) for line in SMALL_PROGRAM_DUMP.splitlines()
        if not line.endswith(":")
    )
    assert asm.dump(asm.assemble(SMALL_PROGRAM)) == expected


def test_disassemble_round_trip():
    data = asm.assemble(SMALL_PROGRAM)
    decoded = asm.disassemble(data)
    resolved = [insn._replace(target=None) for insn in asm.resolve(SMALL_PROGRAM)]
    assert decoded == resolved
    assert asm.assemble(decoded) == data
    assert len(decoded) == len(data) // 8 == 28


def test_disassemble_round_trip_every_golden_form():
    forms = [asm.alu64_imm(op, R1, 7) for op in ALU_GOLDEN if op != NEG]
    forms += [asm.jmp32_reg(op, R1, R2, -3) for op in JMP_GOLDEN]
    forms += [asm.ldx(size, R1, R6, -8) for size in (B, H, W, DW)]
    forms += [asm.ld_imm64(R1, -2), asm.call(5), asm.exit_()]
    flat = list(asm.flatten(forms))
    assert asm.disassemble(asm.assemble(flat)) == flat


def test_disassemble_rejects_partial_slot():
    with pytest.raises(AsmError):
        asm.disassemble(b"\x95" + b"\x00" * 8)
