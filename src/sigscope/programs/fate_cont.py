"""Whether a SIGCONT resumed anything: the target's job-control state at its generation.

prepare_signal() (kernel/signal.c), which runs before the signal_generate tracepoint, handles
a SIGCONT by waking the stopped threads and, if the process was stopped (SIGNAL_STOP_STOPPED)
or in the middle of a group stop, by setting SIGNAL_CLD_CONTINUED or SIGNAL_CLD_STOPPED in
``signal_struct.flags``: the note that the first resumed thread turns into its parent's
SIGCHLD (and clears) in get_signal(). So at signal_generate a CLD bit in the target's flags
says that this SIGCONT, or an earlier one whose note no thread has taken yet, resumed the
process; no CLD bit says it resumed nothing. User space (fate.py) tells the two apart.

The tracefs format of signal_generate has the target's pid but not its task, so this is a
raw tracepoint program (BPF_PROG_TYPE_RAW_TRACEPOINT: ctx is the tracepoint's arguments,
``(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)``,
as u64s) reading task->pid, task->tgid and task->signal->flags with bpf_probe_read_kernel at
the offsets the kernel's BTF gives. It writes a KIND_SIGCONT record (model/record.py):
``target_tid``/``arg_pid`` = the target's tid/tgid, ``arg_tid`` = its signal flags,
``gen_result`` = the generation's result.
"""

from __future__ import annotations

from typing import NamedTuple

from sigscope.bpf import asm, btf_scan
from sigscope.bpf.asm import DW, R0, R1, R6, R7, R8, R9, R10, W
from sigscope.model import record as rec
from sigscope.model.record import offset as _f
from sigscope.programs.common import STACK_RECORD, Labels, read_kernel_value
from sigscope.programs.signal import ProbeConfig, zero_stack_record

SIGCONT = 18
# include/linux/sched/signal.h
SIGNAL_STOP_STOPPED = 0x1
SIGNAL_STOP_CONTINUED = 0x2
SIGNAL_CLD_STOPPED = 0x10
SIGNAL_CLD_CONTINUED = 0x20
SIGNAL_CLD_MASK = SIGNAL_CLD_STOPPED | SIGNAL_CLD_CONTINUED

RAW_TRACEPOINT = "signal_generate"
# Argument slots of the raw tracepoint (include/trace/events/signal.h, TP_PROTO).
_ARG_SIG, _ARG_TASK, _ARG_RESULT = 0, 2, 4


class ContLayout(NamedTuple):
    task_pid: int
    task_tgid: int
    task_signal: int
    signal_flags: int


def cont_layout() -> ContLayout | None:
    """The offsets, from the kernel's BTF (a targeted scan); None without BTF."""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "signal_struct")
        task, sig = found["task_struct"], found["signal_struct"]
        return ContLayout(task["pid"].offset, task["tgid"].offset, task["signal"].offset,
                          sig["flags"].offset)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None


def build_sigcont_state(cfg: ProbeConfig, layout: ContLayout) -> list:
    """The raw signal_generate program: a KIND_SIGCONT record for every SIGCONT generated
    (to any process the target filter keeps)."""
    labels, out = Labels(), "out"
    ids = cfg.filters.target_ids
    prog = [
        asm.mov64_reg(R6, R1),
        asm.ldx(DW, R1, R6, _ARG_SIG * 8),
        asm.jmp_imm("JNE", R1, SIGCONT, out),
        asm.ldx(DW, R8, R6, _ARG_TASK * 8),
        *read_kernel_value(R8, layout.task_pid, out, size=4),
        asm.mov64_reg(R7, R0),
        *read_kernel_value(R8, layout.task_tgid, out, size=4),
        asm.alu64_imm("LSH", R0, 32),
        asm.alu64_reg("OR", R7, R0),          # r7 = the target's tgid << 32 | tid
    ]
    if ids:
        ok = labels("target_ok")
        prog += [asm.mov64_reg(R1, R7)]
        prog += [asm.jmp32_imm("JEQ", R1, i, ok) for i in sorted(ids)]
        prog += [asm.alu64_imm("RSH", R1, 32)]
        prog += [asm.jmp32_imm("JEQ", R1, i, ok) for i in sorted(ids)]
        prog += [asm.ja(out), asm.label(ok)]
    prog += [
        *read_kernel_value(R8, layout.task_signal, out, size=8),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.signal_flags, out, size=4),
        asm.mov64_reg(R9, R0),                # r9 = signal->flags
        *zero_stack_record(),
        asm.st(W, R10, STACK_RECORD + _f("kind"), rec.KIND_SIGCONT),
        asm.st(W, R10, STACK_RECORD + _f("sig"), SIGCONT),
        asm.st(W, R10, STACK_RECORD + _f("arg_pidfd"), -1),
        asm.stx(W, R10, R7, STACK_RECORD + _f("target_tid")),
        asm.mov64_reg(R1, R7),
        asm.alu64_imm("RSH", R1, 32),
        asm.stx(DW, R10, R1, STACK_RECORD + _f("arg_pid")),
        asm.stx(DW, R10, R9, STACK_RECORD + _f("arg_tid")),
        asm.ldx(DW, R1, R6, _ARG_RESULT * 8),
        asm.stx(W, R10, R1, STACK_RECORD + _f("gen_result")),
        asm.call("get_current_pid_tgid"),
        asm.stx(W, R10, R0, STACK_RECORD + _f("sender_tid")),
        asm.alu64_imm("RSH", R0, 32),
        asm.stx(W, R10, R0, STACK_RECORD + _f("sender_tgid")),
        asm.call("ktime_get_ns"),
        asm.stx(DW, R10, R0, STACK_RECORD + _f("ktime_ns")),
        asm.mov64_reg(R9, R10),
        asm.alu64_imm("ADD", R9, STACK_RECORD),
        *cfg.output.write(R9, labels),
        asm.label(out),
        asm.mov64_imm(R0, 0),
        asm.exit_(),
    ]
    return prog
