"""What every signal probe builder shares: the stack layout of the programs, label names, the
per-CPU ``counters`` array and the output step (where a finished record goes).

Split from programs/signal.py so that programs/task.py (reading the sender from task_struct) and the
builders can share it without importing each other.

The output step is an object (the ``Output`` protocol): ``RingbufOutput`` (a BPF ring buffer,
``bpf_ringbuf_output`` with BPF_RB_NO_WAKEUP: the reader polls at a bounded interval, so a signal
storm never pays for a reader wake-up per event), ``PerfOutput`` (a perf event array,
``bpf_perf_event_output`` on the current CPU), and programs/count.py's ``CountOutput`` (`sigscope
top`: the record is counted in a hash map, never written out). A write that fails (buffer full)
is counted in ``COUNTER_LOST``: lost, never hidden. Builders take the fds of maps made by the
session; they create none.
"""

from __future__ import annotations

import enum
import itertools
from typing import NamedTuple, Protocol

from sigscope.bpf import asm
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R5, R6, R10, W
from sigscope.bpf.uapi import BPF_F_CURRENT_CPU, BPF_RB_NO_WAKEUP
from sigscope.model import record as rec

# Stack layout (offsets from r10). The record buffer must be 8-aligned.
STACK_RECORD = -rec.RECORD_SIZE                 # one record being built
STACK_KEY = STACK_RECORD - 8                   # u32 map key (tid or counter index)
STACK_TASK = STACK_KEY - 8                     # the current task_struct pointer (spilled)
STACK_SCRATCH = STACK_TASK - 8                 # a kernel pointer kept across a helper call
STACK_TIMED = STACK_SCRATCH - 8                # u64: the parked call's ktime is this event's
STACK_USED = -STACK_TIMED                       # bytes of stack these programs use

# Slots of the per-CPU `counters` array (u64 each; programs/count.py adds one after these).
COUNTER_LOST = 0            # a record could not be written (buffer full)
COUNTER_INFLIGHT_FULL = 1   # the in-flight map was full: the call is reported as lost
NUM_COUNTERS = 4


class Labels:
    """Unique label names within one program."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self, what: str) -> str:
        return f"{what}_{next(self._counter)}"


def read_kernel_value(src_reg: int, offset: int, fail: str, size: int = 8) -> list:
    """r0 = the `size`-byte (4 or 8) value at src_reg + offset, read with bpf_probe_read_kernel
    through the stack key slot; jump to `fail` when the read fails. Clobbers r1-r5."""
    return [
        asm.st(DW, R10, STACK_KEY, 0),
        asm.mov64_reg(R3, src_reg),
        asm.alu64_imm("ADD", R3, offset),
        asm.mov64_reg(R1, R10),
        asm.alu64_imm("ADD", R1, STACK_KEY),
        asm.mov64_imm(R2, size),
        asm.call("probe_read_kernel"),
        asm.jmp_imm("JNE", R0, 0, fail),
        asm.ldx(DW if size == 8 else W, R0, R10, STACK_KEY),
    ]


def update_elem(map_fd: int, key_at: int, value_at: int, flags: int) -> list:
    """bpf_map_update_elem(map, r10 + key_at, r10 + value_at, flags): key and value on the
    stack. r0 = its result. Clobbers r0-r5."""
    return [
        asm.ld_map_fd(R1, map_fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, key_at),
        asm.mov64_reg(R3, R10),
        asm.alu64_imm("ADD", R3, value_at),
        asm.mov64_imm(R4, flags),
        asm.call("map_update_elem"),
    ]


def bump_counter(counters_fd: int, index: int, labels: Labels, slot: int = STACK_KEY) -> list:
    """counters[index] += 1 on this CPU (counters_fd: the per-CPU `counters` array). Uses the
    4-byte stack slot at `slot` (default: the stack key slot). Clobbers r0-r5."""
    done = labels("counted")
    return [
        asm.st(W, R10, slot, index),
        asm.ld_map_fd(R1, counters_fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, slot),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, done),
        asm.mov64_imm(R1, 1),
        asm.atomic_add(DW, R0, R1, 0),
        asm.label(done),
    ]


class Output(Protocol):
    """Where a program's finished records go (module docstring)."""

    def write(self, data_reg: int, labels: Labels, on_success: list | None = None) -> list:
        """The instructions that hand on the rec.RECORD_SIZE bytes at data_reg (the stack
        record, or an in-flight slot), then run `on_success` if that worked. Expect r6 = ctx;
        keep r6-r9; clobber r0-r5; may use the stack below STACK_USED."""
        ...


def _written_or_lost(write: list, counters_fd: int, labels: Labels, failed: str, done: str,
                     on_success: list | None) -> list:
    """After a helper that returns 0 on success: on_success, or a COUNTER_LOST bump."""
    return [
        *write,
        asm.jmp_imm("JNE", R0, 0, failed),
        *(on_success or []),
        asm.ja(done),
        asm.label(failed),
        *bump_counter(counters_fd, COUNTER_LOST, labels),
        asm.label(done),
    ]


class RingbufOutput(NamedTuple):
    """Records into a BPF ring buffer (bpf_ringbuf_output, BPF_RB_NO_WAKEUP); a failed write
    (ring full) is counted in counters[COUNTER_LOST]."""

    events: int     # fd of the BPF_MAP_TYPE_RINGBUF map
    counters: int   # fd of the per-CPU `counters` array

    def write(self, data_reg: int, labels: Labels, on_success: list | None = None) -> list:
        failed, done = labels("output_failed"), labels("output_done")
        return _written_or_lost([
            asm.ld_map_fd(R1, self.events),
            asm.mov64_reg(R2, data_reg),
            asm.mov64_imm(R3, rec.RECORD_SIZE),
            asm.mov64_imm(R4, BPF_RB_NO_WAKEUP),
            asm.call("ringbuf_output"),
        ], self.counters, labels, failed, done, on_success)


class PerfOutput(NamedTuple):
    """Records into a perf event array, on the current CPU's event (bpf_perf_event_output,
    BPF_F_CURRENT_CPU; needs r6 = ctx); a failed write is counted in counters[COUNTER_LOST]."""

    events: int     # fd of the BPF_MAP_TYPE_PERF_EVENT_ARRAY map
    counters: int   # fd of the per-CPU `counters` array

    def write(self, data_reg: int, labels: Labels, on_success: list | None = None) -> list:
        failed, done = labels("output_failed"), labels("output_done")
        return _written_or_lost([
            asm.mov64_reg(R1, R6),
            asm.ld_map_fd(R2, self.events),
            asm.ld_imm64(R3, BPF_F_CURRENT_CPU),
            asm.mov64_reg(R4, data_reg),
            asm.mov64_imm(R5, rec.RECORD_SIZE),
            asm.call("perf_event_output"),
        ], self.counters, labels, failed, done, on_success)


class Role(enum.Enum):
    """What a program does among the signal probes: the session detaches by role (entries
    first, session.DETACH_ORDER), never by the name of a tracepoint."""

    ENTRY = "entry"        # sys_enter_<call>: parks a signal syscall in the in-flight map
    GENERATE = "generate"  # signal_generate: attributes a recipient, or a kernel signal
    EXIT = "exit"          # sys_exit_<call>: completes a parked call and writes it out
    FATE = "fate"          # --fate: what became of a signal (delivery, exit, signalfd, ...)


class ProgramPlan(NamedTuple):
    """One program to load and attach: its name (at most 15 characters), role, the
    (system, event) tracepoints it serves, and its instructions."""

    name: str
    role: Role
    tracepoints: tuple[tuple[str, str], ...]
    insns: list
