"""What every signal probe builder shares: the stack layout of the programs and label names.

Split from programs/signal.py so that programs/task.py (reading the sender from task_struct) and the
builders can share it without importing each other.
"""

from __future__ import annotations

import itertools

from sigscope.bpf import asm
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R10, W
from sigscope.model import record as rec

# Stack layout (offsets from r10). The record buffer must be 8-aligned.
_STACK_RECORD = -rec.RECORD_SIZE                 # one record being built
_STACK_KEY = _STACK_RECORD - 8                   # u32 map key (tid or counter index)
_STACK_TASK = _STACK_KEY - 8                     # the current task_struct pointer (spilled)
STACK_USED = -_STACK_TASK                        # bytes of stack these programs use


class _Labels:
    """Unique label names within one program."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self, what: str) -> str:
        return f"{what}_{next(self._counter)}"


def _f(name: str) -> int:
    return rec.offset(name)


def read_kernel_value(src_reg: int, offset: int, fail: str, size: int = 8) -> list:
    """r0 = the `size`-byte (4 or 8) value at src_reg + offset, read with bpf_probe_read_kernel
    through the stack key slot; jump to `fail` when the read fails. Clobbers r1-r5."""
    return [
        asm.st(DW, R10, _STACK_KEY, 0),
        asm.mov64_reg(R3, src_reg),
        asm.alu64_imm("ADD", R3, offset),
        asm.mov64_reg(R1, R10),
        asm.alu64_imm("ADD", R1, _STACK_KEY),
        asm.mov64_imm(R2, size),
        asm.call("probe_read_kernel"),
        asm.jmp_imm("JNE", R0, 0, fail),
        asm.ldx(DW if size == 8 else W, R0, R10, _STACK_KEY),
    ]
