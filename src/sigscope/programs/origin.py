"""The kernel stack of a kernel-generated SIGKILL, taken in signal_generate.

A SIGKILL's signal and si_code do not say why the kernel sent it (model/origins.py); the stack
of the generating path does. bpf_get_stackid() (allowed in tracepoint programs; it walks the
stack from the tracepoint's caller registers) stores the stack in a BPF_MAP_TYPE_STACK_TRACE
map and returns its id, kept in the record's ``kstack`` field as id + 1 (0: no stack taken; a
negative value: the helper's -errno, e.g. -EEXIST when another stack holds the bucket). Taken
only for SIGKILL: SIGKILLs are rare, and the walk costs about a microsecond.
"""

from __future__ import annotations

from sigscope.bpf import asm
from sigscope.bpf.asm import R0, R1, R2, R3, R6, R9, R10, W
from sigscope.model.record import offset as _f
from sigscope.programs.common import STACK_RECORD, Labels

SIGKILL = 9
# The BPF_MAP_TYPE_STACK_TRACE map kernel_sigkill_stack() writes to (the tracer makes it).
STACK_MAP_ENTRIES = 1024  # distinct SIGKILL paths; ids are never deleted while tracing
STACK_DEPTH = 32          # frames kept: the origin is decided within the first few


def kernel_sigkill_stack(stack_map_fd: int, labels: Labels) -> list:
    """When the signal in r9 is SIGKILL, take the kernel stack (ctx in r6) and store id + 1
    (or the negative error) in the stack record's kstack field. No-op when stack_map_fd < 0.
    Clobbers r0-r5."""
    if stack_map_fd < 0:
        return []
    done, failed = labels("kstack_done"), labels("kstack_failed")
    return [
        asm.jmp_imm("JNE", R9, SIGKILL, done),
        asm.mov64_reg(R1, R6),
        asm.ld_map_fd(R2, stack_map_fd),
        asm.mov64_imm(R3, 0),  # the kernel stack; compare by hash
        asm.call("get_stackid"),
        asm.jmp_imm("JSLT", R0, 0, failed),
        asm.alu64_imm("ADD", R0, 1),
        asm.label(failed),
        asm.stx(W, R10, R0, STACK_RECORD + _f("kstack")),
        asm.label(done),
    ]
