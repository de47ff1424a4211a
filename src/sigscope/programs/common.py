"""What every signal probe builder shares: the stack layout of the programs and label names.

Split from programs/signal.py so that programs/task.py (reading the sender from task_struct) and the
builders can share it without importing each other.
"""

from __future__ import annotations

import itertools

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
