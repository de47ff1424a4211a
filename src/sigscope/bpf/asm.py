"""eBPF assembler: instructions as values, labels resolved by name, helpers by name, text dump.

Every instruction is an immutable :class:`Insn` of one 8-byte slot.  A 64-bit immediate load
(``ld_imm64`` and the map-fd / map-value pseudo loads) is a list of two ``Insn`` values, the
second with code 0 carrying the upper 32 bits, so "one ``Insn`` == one slot" holds everywhere
and jump offsets can be counted by list position.

Programs are plain (possibly nested) lists of ``Insn``; ``label(name)`` is a pseudo-instruction
that occupies no slot, and jumps name their target label instead of hand-counting offsets::

    prog = [
        mov64_imm(R0, 0),
        jmp_imm(JEQ, R1, 0, "out"),
        mov64_imm(R0, 1),
        label("out"),
        exit_(),
    ]
    code = assemble(prog)

Encoding (include/uapi/linux/bpf.h, struct bpf_insn): u8 code, u8 regs (dst in the low nibble,
src in the high nibble), s16 off, s32 imm, little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from sigscope.errors import InternalError

__all__ = [
    "AsmError", "Insn", "HELPERS", "helper_id", "helper_name",
    "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10",
    "B", "H", "W", "DW",
    "ADD", "SUB", "MUL", "DIV", "OR", "AND", "LSH", "RSH", "NEG", "MOD", "XOR", "MOV", "ARSH",
    "JEQ", "JGT", "JGE", "JSET", "JNE", "JSGT", "JSGE", "JLT", "JLE", "JSLT", "JSLE",
    "mov64_imm", "mov64_reg", "mov32_imm", "mov32_reg", "neg64", "neg32",
    "alu64_imm", "alu64_reg", "alu32_imm", "alu32_reg", "to_be", "to_le", "bswap",
    "ldx", "stx", "st", "atomic_add", "atomic_op",
    "ld_imm64", "ld_map_fd", "ld_map_value",
    "jmp_imm", "jmp_reg", "jmp32_imm", "jmp32_reg", "ja", "call", "exit_", "label",
    "flatten", "resolve", "assemble", "disassemble", "dump",
]


class AsmError(InternalError, ValueError):
    """A program that cannot be encoded (bad label, register, immediate or offset)."""


# --- UAPI opcode constants (include/uapi/linux/bpf_common.h and bpf.h) -------------------

# instruction classes
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07

# load/store sizes
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18

# load/store modes
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_MEMSX = 0x80
BPF_ATOMIC = 0xC0

# source operand
BPF_K = 0x00
BPF_X = 0x08

# ALU operations
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xA0
BPF_MOV = 0xB0
BPF_ARSH = 0xC0
BPF_END = 0xD0

# byte-swap direction (in the source bit of BPF_ALU | BPF_END)
BPF_TO_LE = 0x00
BPF_TO_BE = 0x08

# jump operations
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xA0
BPF_JLE = 0xB0
BPF_JSLT = 0xC0
BPF_JSLE = 0xD0

# atomic operations (in imm of BPF_STX | BPF_ATOMIC)
BPF_FETCH = 0x01
BPF_XCHG = 0xE0 | BPF_FETCH
BPF_CMPXCHG = 0xF0 | BPF_FETCH

# src_reg of the first ld_imm64 slot
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_BTF_ID = 3
BPF_PSEUDO_FUNC = 4
BPF_PSEUDO_MAP_IDX = 5
BPF_PSEUDO_MAP_IDX_VALUE = 6

# src_reg of BPF_CALL
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_KFUNC_CALL = 2

MAX_BPF_REG = 11  # r0..r10

# --- public short names ------------------------------------------------------------------

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

B, H, W, DW = BPF_B, BPF_H, BPF_W, BPF_DW

ADD, SUB, MUL, DIV, OR, AND = BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND
LSH, RSH, NEG, MOD, XOR, MOV, ARSH = BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR, BPF_MOV, BPF_ARSH

JEQ, JGT, JGE, JSET, JNE = BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE
JSGT, JSGE, JLT, JLE, JSLT, JSLE = BPF_JSGT, BPF_JSGE, BPF_JLT, BPF_JLE, BPF_JSLT, BPF_JSLE

_ALU_OPS = {
    "ADD": BPF_ADD, "SUB": BPF_SUB, "MUL": BPF_MUL, "DIV": BPF_DIV, "OR": BPF_OR,
    "AND": BPF_AND, "LSH": BPF_LSH, "RSH": BPF_RSH, "NEG": BPF_NEG, "MOD": BPF_MOD,
    "XOR": BPF_XOR, "MOV": BPF_MOV, "ARSH": BPF_ARSH,
}
_JMP_OPS = {
    "JEQ": BPF_JEQ, "JGT": BPF_JGT, "JGE": BPF_JGE, "JSET": BPF_JSET, "JNE": BPF_JNE,
    "JSGT": BPF_JSGT, "JSGE": BPF_JSGE, "JLT": BPF_JLT, "JLE": BPF_JLE, "JSLT": BPF_JSLT,
    "JSLE": BPF_JSLE,
}
_SIZES = {"B": BPF_B, "H": BPF_H, "W": BPF_W, "DW": BPF_DW}

# --- helper ids: the order of ___BPF_FUNC_MAPPER in include/uapi/linux/bpf.h -------------
# Index in this tuple == BPF_FUNC_<name>.  The list is frozen upstream (new functionality is
# kfuncs), so it ends at cgrp_storage_delete = 211.
_HELPER_NAMES = (
    "unspec", "map_lookup_elem", "map_update_elem", "map_delete_elem", "probe_read",
    "ktime_get_ns", "trace_printk", "get_prandom_u32", "get_smp_processor_id",
    "skb_store_bytes",
    # 10
    "l3_csum_replace", "l4_csum_replace", "tail_call", "clone_redirect",
    "get_current_pid_tgid", "get_current_uid_gid", "get_current_comm", "get_cgroup_classid",
    "skb_vlan_push", "skb_vlan_pop",
    # 20
    "skb_get_tunnel_key", "skb_set_tunnel_key", "perf_event_read", "redirect",
    "get_route_realm", "perf_event_output", "skb_load_bytes", "get_stackid", "csum_diff",
    "skb_get_tunnel_opt",
    # 30
    "skb_set_tunnel_opt", "skb_change_proto", "skb_change_type", "skb_under_cgroup",
    "get_hash_recalc", "get_current_task", "probe_write_user", "current_task_under_cgroup",
    "skb_change_tail", "skb_pull_data",
    # 40
    "csum_update", "set_hash_invalid", "get_numa_node_id", "skb_change_head",
    "xdp_adjust_head", "probe_read_str", "get_socket_cookie", "get_socket_uid", "set_hash",
    "setsockopt",
    # 50
    "skb_adjust_room", "redirect_map", "sk_redirect_map", "sock_map_update",
    "xdp_adjust_meta", "perf_event_read_value", "perf_prog_read_value", "getsockopt",
    "override_return", "sock_ops_cb_flags_set",
    # 60
    "msg_redirect_map", "msg_apply_bytes", "msg_cork_bytes", "msg_pull_data", "bind",
    "xdp_adjust_tail", "skb_get_xfrm_state", "get_stack", "skb_load_bytes_relative",
    "fib_lookup",
    # 70
    "sock_hash_update", "msg_redirect_hash", "sk_redirect_hash", "lwt_push_encap",
    "lwt_seg6_store_bytes", "lwt_seg6_adjust_srh", "lwt_seg6_action", "rc_repeat",
    "rc_keydown", "skb_cgroup_id",
    # 80
    "get_current_cgroup_id", "get_local_storage", "sk_select_reuseport",
    "skb_ancestor_cgroup_id", "sk_lookup_tcp", "sk_lookup_udp", "sk_release",
    "map_push_elem", "map_pop_elem", "map_peek_elem",
    # 90
    "msg_push_data", "msg_pop_data", "rc_pointer_rel", "spin_lock", "spin_unlock",
    "sk_fullsock", "tcp_sock", "skb_ecn_set_ce", "get_listener_sock", "skc_lookup_tcp",
    # 100
    "tcp_check_syncookie", "sysctl_get_name", "sysctl_get_current_value",
    "sysctl_get_new_value", "sysctl_set_new_value", "strtol", "strtoul", "sk_storage_get",
    "sk_storage_delete", "send_signal",
    # 110
    "tcp_gen_syncookie", "skb_output", "probe_read_user", "probe_read_kernel",
    "probe_read_user_str", "probe_read_kernel_str", "tcp_send_ack", "send_signal_thread",
    "jiffies64", "read_branch_records",
    # 120
    "get_ns_current_pid_tgid", "xdp_output", "get_netns_cookie",
    "get_current_ancestor_cgroup_id", "sk_assign", "ktime_get_boot_ns", "seq_printf",
    "seq_write", "sk_cgroup_id", "sk_ancestor_cgroup_id",
    # 130
    "ringbuf_output", "ringbuf_reserve", "ringbuf_submit", "ringbuf_discard",
    "ringbuf_query", "csum_level", "skc_to_tcp6_sock", "skc_to_tcp_sock",
    "skc_to_tcp_timewait_sock", "skc_to_tcp_request_sock",
    # 140
    "skc_to_udp6_sock", "get_task_stack", "load_hdr_opt", "store_hdr_opt",
    "reserve_hdr_opt", "inode_storage_get", "inode_storage_delete", "d_path",
    "copy_from_user", "snprintf_btf",
    # 150
    "seq_printf_btf", "skb_cgroup_classid", "redirect_neigh", "per_cpu_ptr", "this_cpu_ptr",
    "redirect_peer", "task_storage_get", "task_storage_delete", "get_current_task_btf",
    "bprm_opts_set",
    # 160
    "ktime_get_coarse_ns", "ima_inode_hash", "sock_from_file", "check_mtu",
    "for_each_map_elem", "snprintf", "sys_bpf", "btf_find_by_name_kind", "sys_close",
    "timer_init",
    # 170
    "timer_set_callback", "timer_start", "timer_cancel", "get_func_ip", "get_attach_cookie",
    "task_pt_regs", "get_branch_snapshot", "trace_vprintk", "skc_to_unix_sock",
    "kallsyms_lookup_name",
    # 180
    "find_vma", "loop", "strncmp", "get_func_arg", "get_func_ret", "get_func_arg_cnt",
    "get_retval", "set_retval", "xdp_get_buff_len", "xdp_load_bytes",
    # 190
    "xdp_store_bytes", "copy_from_user_task", "skb_set_tstamp", "ima_file_hash",
    "kptr_xchg", "map_lookup_percpu_elem", "skc_to_mptcp_sock", "dynptr_from_mem",
    "ringbuf_reserve_dynptr", "ringbuf_submit_dynptr",
    # 200
    "ringbuf_discard_dynptr", "dynptr_read", "dynptr_write", "dynptr_data",
    "tcp_raw_gen_syncookie_ipv4", "tcp_raw_gen_syncookie_ipv6",
    "tcp_raw_check_syncookie_ipv4", "tcp_raw_check_syncookie_ipv6", "ktime_get_tai_ns",
    "user_ringbuf_drain",
    # 210
    "cgrp_storage_get", "cgrp_storage_delete",
)

HELPERS: dict[str, int] = {name: index for index, name in enumerate(_HELPER_NAMES) if index}


def helper_id(helper: str | int) -> int:
    """The BPF_FUNC_* id of a helper given as ``"ringbuf_reserve"``, ``"bpf_ringbuf_reserve"``
    or an int."""
    if isinstance(helper, bool):
        raise AsmError(f"bad BPF helper {helper!r}")
    if isinstance(helper, int):
        if not 0 < helper <= 0x7FFFFFFF:
            raise AsmError(f"bad BPF helper id {helper}")
        return helper
    name = helper[4:] if helper.startswith("bpf_") else helper
    try:
        return HELPERS[name]
    except KeyError:
        raise AsmError(f"unknown BPF helper {helper!r}") from None


def helper_name(helper_id: int) -> str | None:
    """``"bpf_<name>"`` for a known helper id, else None."""
    if 0 < helper_id < len(_HELPER_NAMES):
        return "bpf_" + _HELPER_NAMES[helper_id]
    return None


# --- the instruction value ---------------------------------------------------------------

_INSN = struct.Struct("<BBhi")
S16_MIN, S16_MAX = -(1 << 15), (1 << 15) - 1
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1


class Insn(NamedTuple):
    """One 8-byte instruction slot, or a label pseudo-instruction.

    ``label`` is set only on the pseudo-instruction made by :func:`label`; it occupies no slot.
    ``target`` names the label a jump goes to; :func:`assemble` turns it into ``off``.
    """

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None
    target: str | None = None

    @property
    def is_label(self) -> bool:
        return self.label is not None

    def encode(self) -> bytes:
        """The 8 bytes of this slot (offsets must already be resolved)."""
        if self.is_label:
            raise AsmError(f"label {self.label!r} has no encoding")
        _check_fields(self)
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, self.imm)


InsnList = Insn | Iterable


def _check_fields(insn: Insn) -> None:
    for what in ("code", "dst", "src", "off", "imm"):
        if not isinstance(getattr(insn, what), int):
            raise AsmError(f"{what} must be an int in {insn!r}")
    if not 0 <= insn.code <= 0xFF:
        raise AsmError(f"opcode {insn.code:#x} does not fit in 8 bits")
    for what, reg in (("dst", insn.dst), ("src", insn.src)):
        if not 0 <= reg < MAX_BPF_REG:
            raise AsmError(f"{what} register {reg!r} out of range r0..r10 in {_describe(insn)}")
    if not S16_MIN <= insn.off <= S16_MAX:
        raise AsmError(f"offset {insn.off} out of s16 range in {_describe(insn)}")
    if not S32_MIN <= insn.imm <= S32_MAX:
        raise AsmError(f"immediate {insn.imm} out of s32 range in {_describe(insn)}")


def _describe(insn: Insn) -> str:
    return (f"insn(code={insn.code:#04x}, dst={insn.dst}, src={insn.src}, "
            f"off={insn.off}, imm={insn.imm})")


def _reg(reg: int) -> int:
    if isinstance(reg, bool) or not isinstance(reg, int) or not 0 <= reg < MAX_BPF_REG:
        raise AsmError(f"register {reg!r} out of range r0..r10")
    return reg


def _imm32(imm: int) -> int:
    if isinstance(imm, bool) or not isinstance(imm, int) or not S32_MIN <= imm <= S32_MAX:
        raise AsmError(f"immediate {imm!r} out of s32 range")
    return imm


def _off16(off: int) -> int:
    if isinstance(off, bool) or not isinstance(off, int) or not S16_MIN <= off <= S16_MAX:
        raise AsmError(f"offset {off!r} out of s16 range")
    return off


def _op(op: int | str, table: dict[str, int], kind: str) -> int:
    if isinstance(op, str):
        try:
            return table[op.upper()]
        except KeyError:
            raise AsmError(f"unknown {kind} operation {op!r}") from None
    if op not in table.values():
        raise AsmError(f"unknown {kind} operation {op!r}")
    return op


def _size(size: int | str) -> int:
    return _op(size, _SIZES, "size")


def _s32(value: int) -> int:
    """The low 32 bits of value as a signed 32-bit int."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# --- ALU ---------------------------------------------------------------------------------

def alu64_imm(op: int | str, dst: int, imm: int) -> Insn:
    """dst = dst <op> imm (64-bit; imm is sign-extended)."""
    return Insn(BPF_ALU64 | _op(op, _ALU_OPS, "ALU") | BPF_K, _reg(dst), 0, 0, _imm32(imm))


def alu64_reg(op: int | str, dst: int, src: int) -> Insn:
    """dst = dst <op> src (64-bit)."""
    return Insn(BPF_ALU64 | _op(op, _ALU_OPS, "ALU") | BPF_X, _reg(dst), _reg(src), 0, 0)


def alu32_imm(op: int | str, dst: int, imm: int) -> Insn:
    """w_dst = w_dst <op> imm (32-bit; the upper half of dst is zeroed)."""
    return Insn(BPF_ALU | _op(op, _ALU_OPS, "ALU") | BPF_K, _reg(dst), 0, 0, _imm32(imm))


def alu32_reg(op: int | str, dst: int, src: int) -> Insn:
    """w_dst = w_dst <op> w_src (32-bit)."""
    return Insn(BPF_ALU | _op(op, _ALU_OPS, "ALU") | BPF_X, _reg(dst), _reg(src), 0, 0)


def mov64_imm(dst: int, imm: int) -> Insn:
    return alu64_imm(BPF_MOV, dst, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    return alu64_reg(BPF_MOV, dst, src)


def mov32_imm(dst: int, imm: int) -> Insn:
    return alu32_imm(BPF_MOV, dst, imm)


def mov32_reg(dst: int, src: int) -> Insn:
    return alu32_reg(BPF_MOV, dst, src)


def neg64(dst: int) -> Insn:
    return alu64_imm(BPF_NEG, dst, 0)


def neg32(dst: int) -> Insn:
    return alu32_imm(BPF_NEG, dst, 0)


def _check_swap_width(bits: int) -> int:
    if bits not in (16, 32, 64):
        raise AsmError(f"byte swap width must be 16, 32 or 64, not {bits!r}")
    return bits


def to_be(dst: int, bits: int) -> Insn:
    """dst = host-to-big-endian of the low ``bits`` of dst (upper bits zeroed)."""
    return Insn(BPF_ALU | BPF_END | BPF_TO_BE, _reg(dst), 0, 0, _check_swap_width(bits))


def to_le(dst: int, bits: int) -> Insn:
    """dst = host-to-little-endian of the low ``bits`` of dst (upper bits zeroed)."""
    return Insn(BPF_ALU | BPF_END | BPF_TO_LE, _reg(dst), 0, 0, _check_swap_width(bits))


def bswap(dst: int, bits: int) -> Insn:
    """Unconditional byte swap (BPF_ALU64 | BPF_END, cpu v4, kernel >= 6.6)."""
    return Insn(BPF_ALU64 | BPF_END | BPF_TO_LE, _reg(dst), 0, 0, _check_swap_width(bits))


# --- memory ------------------------------------------------------------------------------

def ldx(size: int | str, dst: int, src: int, off: int) -> Insn:
    """dst = *(size *)(src + off)."""
    return Insn(BPF_LDX | _size(size) | BPF_MEM, _reg(dst), _reg(src), _off16(off), 0)


def stx(size: int | str, dst: int, src: int, off: int) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(BPF_STX | _size(size) | BPF_MEM, _reg(dst), _reg(src), _off16(off), 0)


def st(size: int | str, dst: int, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(BPF_ST | _size(size) | BPF_MEM, _reg(dst), 0, _off16(off), _imm32(imm))


_ATOMIC_OPS = {"ADD": BPF_ADD, "OR": BPF_OR, "AND": BPF_AND, "XOR": BPF_XOR,
               "XCHG": BPF_XCHG, "CMPXCHG": BPF_CMPXCHG}


def atomic_op(size: int | str, op: int | str, dst: int, src: int, off: int,
              fetch: bool = False) -> Insn:
    """Atomic read-modify-write of *(size *)(dst + off) with src (W or DW only).

    With ``fetch`` the old value is returned in src.  XCHG and CMPXCHG always fetch
    (CMPXCHG compares with r0 and returns the old value in r0).
    """
    size = _size(size)
    if size not in (BPF_W, BPF_DW):
        raise AsmError("atomic operations take size W or DW")
    imm = _op(op, _ATOMIC_OPS, "atomic")
    if fetch:
        imm |= BPF_FETCH
    return Insn(BPF_STX | size | BPF_ATOMIC, _reg(dst), _reg(src), _off16(off), imm)


def atomic_add(size: int | str, dst: int, src: int, off: int,
               fetch: bool = False) -> Insn:
    """lock *(size *)(dst + off) += src (with ``fetch``: src receives the old value)."""
    return atomic_op(size, BPF_ADD, dst, src, off, fetch)


# --- 64-bit immediates (two slots) -------------------------------------------------------

def _ld_imm64_pair(dst: int, src: int, low: int, high: int) -> list[Insn]:
    return [
        Insn(BPF_LD | BPF_DW | BPF_IMM, _reg(dst), src, 0, _s32(low)),
        Insn(0, 0, 0, 0, _s32(high)),
    ]


def ld_imm64(dst: int, imm: int) -> list[Insn]:
    """dst = imm (any signed or unsigned 64-bit value); two slots."""
    if isinstance(imm, bool) or not isinstance(imm, int) or not -(1 << 63) <= imm < (1 << 64):
        raise AsmError(f"immediate {imm!r} out of 64-bit range")
    imm &= (1 << 64) - 1
    return _ld_imm64_pair(dst, 0, imm, imm >> 32)


def ld_map_fd(dst: int, fd: int) -> list[Insn]:
    """dst = pointer to the map with this fd (BPF_PSEUDO_MAP_FD); two slots."""
    return _ld_imm64_pair(dst, BPF_PSEUDO_MAP_FD, _imm32(fd), 0)


def ld_map_value(dst: int, fd: int, offset: int = 0) -> list[Insn]:
    """dst = address of the value of an array map (key 0) plus offset (BPF_PSEUDO_MAP_VALUE)."""
    return _ld_imm64_pair(dst, BPF_PSEUDO_MAP_VALUE, _imm32(fd), _imm32(offset))


# --- jumps -------------------------------------------------------------------------------

def _jump(code: int, dst: int, src: int, imm: int, target: str | int) -> Insn:
    """A jump to a label name, or (int) to a raw slot offset."""
    if isinstance(target, str):
        return Insn(code, dst, src, 0, imm, target=target)
    return Insn(code, dst, src, _off16(target), imm)


def jmp_imm(op: int | str, dst: int, imm: int, target: str | int) -> Insn:
    """if dst <op> imm goto target (64-bit compare; imm sign-extended)."""
    return _jump(BPF_JMP | _op(op, _JMP_OPS, "jump") | BPF_K, _reg(dst), 0, _imm32(imm), target)


def jmp_reg(op: int | str, dst: int, src: int, target: str | int) -> Insn:
    """if dst <op> src goto target (64-bit compare)."""
    return _jump(BPF_JMP | _op(op, _JMP_OPS, "jump") | BPF_X, _reg(dst), _reg(src), 0, target)


def jmp32_imm(op: int | str, dst: int, imm: int, target: str | int) -> Insn:
    """if w_dst <op> imm goto target (32-bit compare)."""
    return _jump(BPF_JMP32 | _op(op, _JMP_OPS, "jump") | BPF_K, _reg(dst), 0, _imm32(imm),
                 target)


def jmp32_reg(op: int | str, dst: int, src: int, target: str | int) -> Insn:
    """if w_dst <op> w_src goto target (32-bit compare)."""
    return _jump(BPF_JMP32 | _op(op, _JMP_OPS, "jump") | BPF_X, _reg(dst), _reg(src), 0,
                 target)


def ja(target: str | int) -> Insn:
    """goto target."""
    return _jump(BPF_JMP | BPF_JA, 0, 0, 0, target)


def call(helper: str | int) -> Insn:
    """Call a helper by name (with or without ``bpf_``) or id; args r1..r5, result r0."""
    return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper_id(helper))


def exit_() -> Insn:
    """Return r0."""
    return Insn(BPF_JMP | BPF_EXIT)


def label(name: str) -> Insn:
    """A jump target; occupies no slot."""
    if not isinstance(name, str) or not name:
        raise AsmError(f"label name must be a non-empty string, not {name!r}")
    return Insn(0, label=name)


# --- assembly ----------------------------------------------------------------------------

def _is_jump(insn: Insn) -> bool:
    cls = insn.code & 0x07
    return cls in (BPF_JMP, BPF_JMP32) and (insn.code & 0xF0) not in (BPF_CALL, BPF_EXIT)


def flatten(insns: InsnList) -> Iterator[Insn]:
    """Yield the Insn values of arbitrarily nested lists/tuples/generators in order."""
    if isinstance(insns, Insn):
        yield insns
        return
    if isinstance(insns, (str, bytes)):
        raise AsmError(f"expected instructions, got {type(insns).__name__}")
    try:
        items = iter(insns)
    except TypeError:
        raise AsmError(f"expected an instruction, got {insns!r}") from None
    for item in items:
        yield from flatten(item)


def _label_slots(flat: Sequence[Insn]) -> dict[str, int]:
    slots: dict[str, int] = {}
    slot = 0
    for insn in flat:
        if insn.label is not None:
            if insn.label in slots:
                raise AsmError(f"duplicate label {insn.label!r}")
            slots[insn.label] = slot
        else:
            slot += 1
    return slots


def resolve(insns: InsnList, keep_labels: bool = False) -> list[Insn]:
    """Flatten and give every jump with a ``target`` its slot offset.

    Label pseudo-instructions are dropped unless ``keep_labels``; jumps keep their ``target``
    name (for :func:`dump`).
    """
    flat = list(flatten(insns))
    slots = _label_slots(flat)
    out: list[Insn] = []
    slot = 0
    for insn in flat:
        if insn.is_label:
            if keep_labels:
                out.append(insn)
            continue
        if insn.target is not None:
            if not _is_jump(insn):
                raise AsmError(f"only jumps take a target label: {_describe(insn)}")
            if insn.target not in slots:
                raise AsmError(f"unknown label {insn.target!r}")
            off = slots[insn.target] - (slot + 1)
            if not S16_MIN <= off <= S16_MAX:
                raise AsmError(f"jump to label {insn.target!r} at slot {slot} needs offset "
                               f"{off}, outside the s16 range")
            insn = insn._replace(off=off)
        out.append(insn)
        slot += 1
    return out


def assemble(insns: InsnList) -> bytes:
    """Encode a (nested) list of instructions, resolving labels, to program bytes."""
    resolved = resolve(insns)
    # One pack call for the whole program (start-up time: programs have hundreds of slots).
    # struct checks the byte, s16 and s32 ranges; a failure, or a register outside r0..r10,
    # falls back to the slot-by-slot encoding for its precise error message.
    values: list[int] = []
    for insn in resolved:
        if insn.dst >= MAX_BPF_REG or insn.src >= MAX_BPF_REG or insn.dst < 0 or insn.src < 0:
            break
        values += (insn.code, (insn.src << 4) | insn.dst, insn.off, insn.imm)
    else:
        try:
            return struct.pack("<" + "BBhi" * len(resolved), *values)
        except (struct.error, TypeError):
            pass
    return b"".join(insn.encode() for insn in resolved)


def disassemble(data: bytes) -> list[Insn]:
    """Decode program bytes into Insn values (one per slot; no labels)."""
    if len(data) % _INSN.size:
        raise AsmError(f"program length {len(data)} is not a multiple of {_INSN.size}")
    out = []
    for code, regs, off, imm in _INSN.iter_unpack(data):
        out.append(Insn(code, regs & 0x0F, regs >> 4, off, imm))
    return out


# --- text dump ---------------------------------------------------------------------------

_ALU_SYMBOLS = {
    BPF_ADD: "+=", BPF_SUB: "-=", BPF_MUL: "*=", BPF_DIV: "/=", BPF_OR: "|=", BPF_AND: "&=",
    BPF_LSH: "<<=", BPF_RSH: ">>=", BPF_MOD: "%=", BPF_XOR: "^=", BPF_MOV: "=",
    BPF_ARSH: "s>>=",
}
_JMP_SYMBOLS = {
    BPF_JEQ: "==", BPF_JGT: ">", BPF_JGE: ">=", BPF_JSET: "&", BPF_JNE: "!=", BPF_JSGT: "s>",
    BPF_JSGE: "s>=", BPF_JLT: "<", BPF_JLE: "<=", BPF_JSLT: "s<", BPF_JSLE: "s<=",
}
_SIZE_TYPES = {BPF_B: "u8", BPF_H: "u16", BPF_W: "u32", BPF_DW: "u64"}
_ATOMIC_NAMES = {BPF_ADD: "add", BPF_OR: "or", BPF_AND: "and", BPF_XOR: "xor"}


def _hex(value: int) -> str:
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def _mem(size: int, reg: int, off: int) -> str:
    return f"*({_SIZE_TYPES[size]} *)(r{reg} {off:+d})"


def _text(insn: Insn, next_insn: Insn | None) -> str:
    """Text of one instruction (for ld_imm64, next_insn is its second slot)."""
    code = insn.code
    cls = code & 0x07
    if cls in (BPF_ALU, BPF_ALU64):
        op = code & 0xF0
        reg = "r" if cls == BPF_ALU64 else "w"
        if op == BPF_END:
            if cls == BPF_ALU64:
                return f"r{insn.dst} = bswap{insn.imm} r{insn.dst}"
            kind = "be" if code & BPF_TO_BE else "le"
            return f"r{insn.dst} = {kind}{insn.imm} r{insn.dst}"
        if op == BPF_NEG:
            return f"{reg}{insn.dst} = -{reg}{insn.dst}"
        if op in _ALU_SYMBOLS:
            source = f"{reg}{insn.src}" if code & BPF_X else str(insn.imm)
            return f"{reg}{insn.dst} {_ALU_SYMBOLS[op]} {source}"
    elif cls in (BPF_JMP, BPF_JMP32):
        op = code & 0xF0
        if cls == BPF_JMP and op == BPF_CALL:
            if insn.src == BPF_PSEUDO_CALL:
                return f"call pc{insn.imm:+d}"
            if insn.src == BPF_PSEUDO_KFUNC_CALL:
                return f"call kernel-function#{insn.imm}"
            name = helper_name(insn.imm)
            return f"call {name}#{insn.imm}" if name else f"call #{insn.imm}"
        if cls == BPF_JMP and op == BPF_EXIT:
            return "exit"
        where = f"goto {insn.off:+d}" + (f" <{insn.target}>" if insn.target else "")
        if cls == BPF_JMP and op == BPF_JA:
            return where
        if op in _JMP_SYMBOLS:
            reg = "r" if cls == BPF_JMP else "w"
            source = f"{reg}{insn.src}" if code & BPF_X else _hex(insn.imm)
            return f"if {reg}{insn.dst} {_JMP_SYMBOLS[op]} {source} {where}"
    elif cls == BPF_LDX and code & 0xE0 == BPF_MEM:
        return f"r{insn.dst} = {_mem(code & 0x18, insn.src, insn.off)}"
    elif cls == BPF_STX and code & 0xE0 == BPF_MEM:
        return f"{_mem(code & 0x18, insn.dst, insn.off)} = r{insn.src}"
    elif cls == BPF_ST and code & 0xE0 == BPF_MEM:
        return f"{_mem(code & 0x18, insn.dst, insn.off)} = {insn.imm}"
    elif cls == BPF_STX and code & 0xE0 == BPF_ATOMIC:
        return _atomic_text(insn)
    elif code == BPF_LD | BPF_DW | BPF_IMM and next_insn is not None:
        low, high = insn.imm & 0xFFFFFFFF, next_insn.imm & 0xFFFFFFFF
        if insn.src == BPF_PSEUDO_MAP_FD:
            return f"r{insn.dst} = map[fd:{insn.imm}]"
        if insn.src == BPF_PSEUDO_MAP_VALUE:
            return f"r{insn.dst} = map[fd:{insn.imm}][0]+{next_insn.imm}"
        if insn.src == 0:
            return f"r{insn.dst} = {(high << 32) | low:#x} ll"
        return f"r{insn.dst} = pseudo{insn.src}[{insn.imm}][{next_insn.imm}] ll"
    return (f".insn code={code:#04x} dst=r{insn.dst} src=r{insn.src} off={insn.off} "
            f"imm={insn.imm}")


def _atomic_text(insn: Insn) -> str:
    size = insn.code & 0x18
    width = "64" if size == BPF_DW else ""
    reg = "r"  # the kernel's disassembler names full registers even for 32-bit atomics
    target = f"({_SIZE_TYPES[size]} *)(r{insn.dst} {insn.off:+d})"
    if insn.imm == BPF_XCHG:
        return f"{reg}{insn.src} = atomic{width}_xchg({target}, {reg}{insn.src})"
    if insn.imm == BPF_CMPXCHG:
        return f"{reg}0 = atomic{width}_cmpxchg({target}, {reg}0, {reg}{insn.src})"
    op = insn.imm & ~BPF_FETCH
    if op in _ATOMIC_NAMES:
        if insn.imm & BPF_FETCH:
            return (f"{reg}{insn.src} = atomic{width}_fetch_{_ATOMIC_NAMES[op]}"
                    f"({target}, {reg}{insn.src})")
        symbol = _ALU_SYMBOLS[op]
        return f"lock *{target} {symbol} {reg}{insn.src}"
    return f".insn atomic code={insn.code:#04x} imm={insn.imm:#x}"


def dump(insns: bytes | InsnList) -> str:
    """Readable listing, one instruction per line with its slot index, labels on own lines.

    Accepts a (nested) instruction list or assembled program bytes.
    """
    if isinstance(insns, (bytes, bytearray, memoryview)):
        items = disassemble(bytes(insns))
    else:
        items = resolve(insns, keep_labels=True)
    lines = []
    slot = 0
    index = 0
    while index < len(items):
        insn = items[index]
        if insn.is_label:
            lines.append(f"{insn.label}:")
            index += 1
            continue
        wide = (insn.code == BPF_LD | BPF_DW | BPF_IMM and index + 1 < len(items)
                and not items[index + 1].is_label)
        next_insn = items[index + 1] if wide else None
        lines.append(f"{slot:4d}: {_text(insn, next_insn)}")
        step = 2 if wide else 1
        index += step
        slot += step
    return "\n".join(lines)
