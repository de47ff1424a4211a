"""Reading the sender of a signal straight from its task_struct.

On this kind of machine every BPF helper call costs tens of ns (return-stack mitigations;
figures in bench/README.md), while
loads through a BTF-typed pointer are inlined: so the probes read the sender's pid, tgid, comm
and uid from `bpf_get_current_task_btf()` at offsets from the running kernel's BTF, with
exactly the results of get_current_pid_tgid/get_current_comm/get_current_uid_gid.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from sigscope.bpf import asm, btf_scan
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R5, R6, R7, R10, W
from sigscope.bpf.program import Program
from sigscope.model.record import offset as _f
from sigscope.programs.common import STACK_RECORD, STACK_TASK, Labels

_BYTES_01 = 0x0101010101010101
_BYTES_80 = 0x8080808080808080


class TaskLayout(NamedTuple):
    """Byte offsets in the running kernel's task_struct (and struct cred) of what a record
    says about its sender."""

    pid: int
    tgid: int
    comm: int
    cred: int
    cred_uid: int


@functools.cache
def task_layout() -> TaskLayout | None:
    """The sender fields' offsets, or None when they cannot be read directly: no BTF, a
    kernel without bpf_get_current_task_btf, or no right to load programs (then the programs
    use get_current_comm/get_current_uid_gid, a helper call each per record). Found by a
    targeted BTF scan (a full parse would cost start-up time) and checked by loading a program
    that makes exactly those reads (costs in bench/README.md)."""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "cred")
        task, cred = found["task_struct"], found["cred"]
        spans = ((task["pid"], 4), (task["tgid"], 4), (task["comm"], 16), (task["cred"], 8),
                 (cred["uid"], 4))
        if any(member.span < size for member, size in spans):
            return None
        layout = TaskLayout(task["pid"].offset, task["tgid"].offset, task["comm"].offset,
                            task["cred"].offset, cred["uid"].offset)
        probe = [*task_prologue(layout), *task_sender_to_stack(layout, None, "out", Labels()),
                 asm.label("out"),
                 asm.mov64_imm(R0, 0), asm.exit_()]
        Program.load(probe, name="sigscope_probe").close()
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None
    return layout


def task_prologue(layout: TaskLayout) -> list:
    """r6 = ctx, the current task spilled at STACK_TASK, r7 = pid_tgid (tgid << 32 | pid, as
    bpf_get_current_pid_tgid returns it), read from the task. Clobbers r0, r1."""
    return [
        asm.mov64_reg(R6, R1),
        asm.call("get_current_task_btf"),
        asm.stx(DW, R10, R0, STACK_TASK),
        asm.ldx(W, R1, R0, layout.pid),
        asm.ldx(W, R7, R0, layout.tgid),
        asm.alu64_imm("LSH", R7, 32),
        asm.alu64_reg("OR", R7, R1),
    ]


def _nul_flags(dst: int, src: int, tmp: int) -> list:
    """dst = 0x80 in the bytes of src that may be NUL. The lowest flag is exactly the first NUL
    (a borrow only raises false flags above a real one); none when src has no NUL."""
    return [
        *asm.ld_imm64(tmp, _BYTES_01),
        asm.mov64_reg(dst, src),
        asm.alu64_reg("SUB", dst, tmp),
        asm.mov64_reg(tmp, src),
        asm.alu64_imm("XOR", tmp, -1),
        asm.alu64_reg("AND", dst, tmp),
        *asm.ld_imm64(tmp, _BYTES_80),
        asm.alu64_reg("AND", dst, tmp),
    ]


def _keep_before_nul(reg: int, flags: int, tmp: int) -> list:
    """reg &= the bytes below the lowest flag (flags must be non-zero)."""
    return [
        asm.mov64_reg(tmp, flags),
        asm.neg64(tmp),
        asm.alu64_reg("AND", flags, tmp),   # 1 << (8k + 7): byte k is the first NUL
        asm.alu64_imm("RSH", flags, 7),
        asm.alu64_imm("SUB", flags, 1),     # bytes 0..k-1
        asm.alu64_reg("AND", reg, flags),
    ]


def _task_comm(layout: TaskLayout, labels: Labels) -> list:
    """r1, r2 = the current task's comm exactly as bpf_get_current_comm(buf, 16) writes it
    (strscpy_pad: at most 15 bytes up to the first NUL, then zeros), with two loads instead of
    a helper call. Expects the task at STACK_TASK. Uses r1-r5."""
    return [
        asm.ldx(DW, R5, R10, STACK_TASK),
        asm.ldx(DW, R1, R5, layout.comm),
        asm.ldx(DW, R2, R5, layout.comm + 8),
        *comm_cut_at_nul(labels),
    ]


def comm_cut_at_nul(labels: Labels) -> list:
    """r1, r2 = the 16 bytes of a comm (little-endian halves) with byte 15 and every byte from
    the first NUL on zeroed: what strscpy_pad leaves. A task's comm may hold stale bytes after
    its NUL (older kernels, 5.10 among them, rename with strlcpy: no padding), and so may the
    tracepoints' copies of it; comparing or keying on those would split one name in two.
    Uses r3, r4."""
    lo_full, done = labels("comm_lo_full"), labels("comm_done")
    return [
        asm.alu64_imm("LSH", R2, 8),        # byte 15 is always the terminating NUL
        asm.alu64_imm("RSH", R2, 8),
        *_nul_flags(R4, R1, R3),
        asm.jmp_imm("JEQ", R4, 0, lo_full),
        *_keep_before_nul(R1, R4, R3),
        asm.mov64_imm(R2, 0),
        asm.ja(done),
        asm.label(lo_full),
        *_nul_flags(R4, R2, R3),
        *_keep_before_nul(R2, R4, R3),
        asm.label(done),
    ]


def task_sender_to_stack(layout: TaskLayout, comm: bytes | None, fail: str,
                          labels: Labels) -> list:
    """The sender's comm and uid into the stack record, read from its task (uid:
    task->cred->uid, which get_current_uid_gid maps through the initial user namespace, where
    the mapping is the identity); jump to fail unless the comm equals `comm` (None: any).
    The uid is read first, before any branch: the verifier spends time (bench/README.md) over
    each load through task->cred on each path that reaches it (it looks types up by name).
    Uses r1-r5."""
    prog = [
        asm.ldx(DW, R5, R10, STACK_TASK),
        asm.ldx(DW, R1, R5, layout.cred),
        asm.ldx(W, R1, R1, layout.cred_uid),
        asm.stx(W, R10, R1, STACK_RECORD + _f("sender_uid")),
        *_task_comm(layout, labels),
        asm.stx(DW, R10, R1, STACK_RECORD + _f("sender_comm")),
        asm.stx(DW, R10, R2, STACK_RECORD + _f("sender_comm") + 8),
    ]
    if comm is not None:
        prog += [
            *asm.ld_imm64(R3, int.from_bytes(comm[:8], "little")),
            asm.jmp_reg("JNE", R1, R3, fail),
            *asm.ld_imm64(R3, int.from_bytes(comm[8:16], "little")),
            asm.jmp_reg("JNE", R2, R3, fail),
        ]
    return prog
