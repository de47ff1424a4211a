"""The BPF programs behind ``--fate``: what happened to a signal after it was generated.

They write the fate kinds of model/record.py into the same events buffer as the signal probes, so
user space sees one stream ordered per CPU, and every record carries its kernel time:

* ``signal:signal_deliver`` — runs in the receiving thread when get_signal() dequeues a signal
  for action, under the same sighand lock as signal_generate: the kernel times of generation and
  delivery of one process's signals are therefore in their true order.
* ``sched:sched_process_exit`` — the exiting task's ``exit_code`` (already set when the
  tracepoint fires), read with bpf_probe_read_kernel at the offset BTF gives for
  ``task_struct.exit_code``. Only signal deaths and the last thread of a process are written:
  a normal thread exit says nothing about any signal. Whether the whole thread group is dead
  comes from one of (ExitLayout / exit_source()):
  - the tracepoint's ``group_dead`` field (Linux 6.16: do_exit() passes its group_dead);
  - else ``task->signal->live`` read through BTF offsets: do_exit() (kernel/exit.c, 5.10 to
    6.18 alike) computes ``group_dead = atomic_dec_and_test(&tsk->signal->live)`` before the
    tracepoint, and live only grows again by a clone of a live thread, so live == 0 at the
    tracepoint means every thread has passed that point: the group is dead. It holds on the
    thread whose decrement reached 0 (exactly group_dead) and also on a sibling still exiting
    alongside it (whose record then says, as truly, that the group is dead);
  - else (no BTF) nothing: every thread's exit is written with its exit code and the group's
    death unknown (FLAG_EXIT_CODE_UNKNOWN | FLAG_GROUP_UNKNOWN), so fatal deliveries end
    "unknown", and so do signals still queued at the end to a process one of whose threads
    exited (it may be dead: not "pending").
* ``syscalls:sys_exit_rt_sigtimedwait`` — sigwaitinfo/sigtimedwait dequeue without
  signal_deliver; a positive return value is the signal consumed.
* ``syscalls:sys_enter_rt_sigaction`` — a handler set to SIG_IGN (or SIG_DFL for a signal whose
  default is to ignore) flushes that signal from every queue of the process.

The signal and target filters are applied here too (a delivery of another signal cannot be the
fate of a traced one), except that SIGKILL deliveries always pass: a fatal signal is delivered
as SIGKILL on every thread of the dying process.
"""

from __future__ import annotations

from typing import NamedTuple

from sigscope.bpf import asm, btf_scan
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R6, R7, R8, R9, R10, B, W
from sigscope.bpf.tracefs import EventFormat
from sigscope.model import record as rec
from sigscope.model.signals import SIGKILL
from sigscope.programs.common import STACK_KEY, STACK_RECORD, Labels
from sigscope.programs.signal import (
    ProbeConfig,
    current_comm_into_stack,
    epilogue,
    fill_sender_into_stack,
    prologue,
    signal_filter,
    zero_stack_record,
)

# How the exit program knows the thread group is dead (selftest prints it).
EXIT_GROUP_DEAD_FIELD = "group_dead field"
EXIT_SIGNAL_LIVE = "signal_struct via BTF"
EXIT_UNKNOWN = "unknown (no BTF)"


class ExitLayout(NamedTuple):
    """Offsets from the kernel's BTF: task_struct.exit_code, task_struct.signal (a pointer)
    and signal_struct.live (an atomic_t, whose int counter is its only member)."""

    exit_code: int
    signal: int
    live: int


def exit_layout() -> ExitLayout | None:
    """The offsets, or None without BTF (or with SIGSCOPE_NO_BTF)."""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "signal_struct")
        task, sig = found["task_struct"], found["signal_struct"]
        return ExitLayout(task["exit_code"].offset, task["signal"].offset, sig["live"].offset)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None


def exit_source(fmt: EventFormat, layout: ExitLayout | None) -> str:
    """EXIT_GROUP_DEAD_FIELD, EXIT_SIGNAL_LIVE or EXIT_UNKNOWN for this tracepoint format."""
    if "group_dead" in fmt.fields:
        return EXIT_GROUP_DEAD_FIELD
    return EXIT_SIGNAL_LIVE if layout is not None else EXIT_UNKNOWN
# What each program reads from its tracepoint (names as in the tracefs format files).
DELIVER_FIELDS = ("sig", "errno", "code", "sa_handler", "sa_flags")
EXIT_FIELDS = ("group_dead",)  # where the kernel has it (exit_source)

# (program name, tracefs system, event) of every fate program, in attach order.
FATE_TRACEPOINTS = (
    ("fate_deliver", "signal", "signal_deliver"),
    ("fate_exit", "sched", "sched_process_exit"),
    ("fate_sigwait", "syscalls", "sys_exit_rt_sigtimedwait"),
    ("fate_sigaction", "syscalls", "sys_enter_rt_sigaction"),
)


def _f(name: str) -> int:
    return rec.offset(name)


def thread_filter(cfg: ProbeConfig, fail: str, labels: Labels) -> list:
    """Fall through when the current thread, or its process, is one of -T (r7 = pid_tgid).
    Uses r1."""
    ids = cfg.filters.target_ids
    if not ids:
        return []
    ok = labels("thread_ok")
    out = [asm.mov64_reg(R1, R7)]
    out += [asm.jmp32_imm("JEQ", R1, i, ok) for i in sorted(ids)]
    out += [asm.alu64_imm("RSH", R1, 32)]
    out += [asm.jmp32_imm("JEQ", R1, i, ok) for i in sorted(ids)]
    return [*out, asm.ja(fail), asm.label(ok)]


def record_header(kind: int) -> list:
    """Zero the stack record and fill kind, the current thread and its comm. Clobbers r0-r5."""
    return [
        *zero_stack_record(),
        *current_comm_into_stack(),
        *fill_sender_into_stack(),
        asm.st(W, R10, STACK_RECORD + _f("kind"), kind),
        asm.st(W, R10, STACK_RECORD + _f("arg_pidfd"), -1),
        asm.st(W, R10, STACK_RECORD + _f("gen_result"), rec.GEN_NONE),
    ]


def write_record(cfg: ProbeConfig, labels: Labels) -> list:
    """Stamp the stack record with the time and write it out. Clobbers r0-r5, r9."""
    return [
        asm.call("ktime_get_ns"),
        asm.stx(DW, R10, R0, STACK_RECORD + _f("ktime_ns")),
        asm.mov64_reg(R9, R10),
        asm.alu64_imm("ADD", R9, STACK_RECORD),
        *cfg.output.write(R9, labels),
    ]


def _wanted_signals(cfg: ProbeConfig) -> tuple[frozenset[int] | None, frozenset[int]]:
    """(wanted, excluded) signals for deliveries: SIGKILL always passes."""
    signals = cfg.filters.signals
    if signals is None:
        return None, cfg.filters.excluded_signals - {SIGKILL}
    return signals | {SIGKILL}, frozenset()


def build_signal_deliver(cfg: ProbeConfig, fmt: EventFormat) -> list:
    """signal:signal_deliver: which thread took which signal, and its disposition then."""
    labels, out = Labels(), "out"
    prog = [*prologue(), asm.ldx(W, R9, R6, fmt.field("sig").offset)]
    wanted, excluded = _wanted_signals(cfg)
    prog += signal_filter(R9, wanted, out, labels, excluded)
    prog += thread_filter(cfg, out, labels)
    prog += record_header(rec.KIND_DELIVER)
    prog += [asm.stx(W, R10, R9, STACK_RECORD + _f("sig"))]
    for src, dst in (("code", "gen_code"), ("errno", "gen_errno")):
        prog += [asm.ldx(W, R1, R6, fmt.field(src).offset),
                 asm.stx(W, R10, R1, STACK_RECORD + _f(dst))]
    for src, dst in (("sa_handler", "ret"), ("sa_flags", "arg_tid")):
        prog += [asm.ldx(DW, R1, R6, fmt.field(src).offset),
                 asm.stx(DW, R10, R1, STACK_RECORD + _f(dst))]
    prog += write_record(cfg, labels)
    return prog + epilogue(out)


def _read_kernel(dst_off: int, size: int, fail: str) -> list:
    """bpf_probe_read_kernel(r10 + dst_off, size, r3), jump to fail on error. Clobbers r0-r5."""
    return [asm.mov64_reg(R1, R10), asm.alu64_imm("ADD", R1, dst_off), asm.mov64_imm(R2, size),
            asm.call("probe_read_kernel"), asm.jmp_imm("JNE", R0, 0, fail)]


def build_process_exit(cfg: ProbeConfig, fmt: EventFormat, layout: ExitLayout | None) -> list:
    """sched:sched_process_exit: the exit code of a thread dying of a signal, or of the last
    thread of a process (r9 = group dead, from exit_source()). Without BTF (layout None) the
    exit code is unknown: with the group_dead field only the last thread is written, without
    it every thread (its group's death unknown); both marked FLAG_EXIT_CODE_UNKNOWN."""
    labels, out = Labels(), "out"
    source = exit_source(fmt, layout)
    prog = [*prologue()]
    if source == EXIT_GROUP_DEAD_FIELD:
        prog += [asm.ldx(B, R9, R6, fmt.field("group_dead").offset)]
    else:
        prog += [asm.mov64_imm(R9, 0)]
    prog += thread_filter(cfg, out, labels)
    if layout is None:
        if source == EXIT_GROUP_DEAD_FIELD:
            prog += [asm.jmp_imm("JEQ", R9, 0, out)]
        prog += [asm.mov64_imm(R8, 0)]
        flags = rec.FLAG_EXIT_CODE_UNKNOWN
        if source == EXIT_UNKNOWN:
            flags |= rec.FLAG_GROUP_UNKNOWN
    else:
        keep = labels("keep")
        prog += [asm.call("get_current_task"), asm.stx(DW, R10, R0, STACK_RECORD)]
        if source == EXIT_SIGNAL_LIVE:
            # r9 = (task->signal->live == 0), read through the task pointer spilled at
            # STACK_RECORD (the record is zeroed and filled only later).
            alive = labels("alive")
            prog += [asm.mov64_reg(R3, R0), asm.alu64_imm("ADD", R3, layout.signal),
                     *_read_kernel(STACK_KEY, 8, out),
                     asm.ldx(DW, R3, R10, STACK_KEY), asm.alu64_imm("ADD", R3, layout.live),
                     *_read_kernel(STACK_KEY, 4, out),
                     asm.ldx(W, R1, R10, STACK_KEY),
                     asm.jmp_imm("JNE", R1, 0, alive),
                     asm.mov64_imm(R9, 1),
                     asm.label(alive)]
        prog += [
            asm.ldx(DW, R3, R10, STACK_RECORD),
            asm.alu64_imm("ADD", R3, layout.exit_code),
            *_read_kernel(STACK_KEY, 4, out),
            asm.ldx(W, R8, R10, STACK_KEY),
            # A death by signal has the signal in the low 7 bits; keep it, and every last thread.
            asm.mov64_reg(R1, R8),
            asm.alu64_imm("AND", R1, 0x7F),
            asm.jmp_imm("JNE", R1, 0, keep),
            asm.jmp_imm("JEQ", R9, 0, out),
            asm.label(keep),
        ]
        flags = 0
    prog += record_header(rec.KIND_EXIT)
    prog += [
        asm.stx(DW, R10, R8, STACK_RECORD + _f("ret")),
        asm.stx(W, R10, R9, STACK_RECORD + _f("gen_group")),
        asm.st(W, R10, STACK_RECORD + _f("flags"), flags),
    ]
    prog += write_record(cfg, labels)
    return prog + epilogue(out)


def build_sigtimedwait_exit(cfg: ProbeConfig, fmt: EventFormat) -> list:
    """sys_exit_rt_sigtimedwait: a positive return is the signal dequeued (consumed)."""
    labels, out = Labels(), "out"
    prog = [*prologue(), asm.ldx(DW, R9, R6, fmt.field("ret").offset),
            asm.jmp_imm("JSLE", R9, 0, out)]
    prog += signal_filter(R9, cfg.filters.signals, out, labels,
                           cfg.filters.excluded_signals)
    prog += thread_filter(cfg, out, labels)
    prog += record_header(rec.KIND_CONSUMED)
    prog += [asm.stx(W, R10, R9, STACK_RECORD + _f("sig"))]
    prog += write_record(cfg, labels)
    return prog + epilogue(out)


def build_sigaction_enter(cfg: ProbeConfig, fmt: EventFormat) -> list:
    """sys_enter_rt_sigaction: report a new handler of SIG_DFL or SIG_IGN (read from the
    caller's struct sigaction, whose first member is sa_handler)."""
    labels, out = Labels(), "out"
    sig, act = fmt.field("sig"), fmt.field("act")
    prog = [*prologue(), asm.ldx(DW, R9, R6, sig.offset)]
    prog += [asm.jmp_imm("JGT", R9, 64, out)]  # unsigned: negative numbers leave too
    prog += signal_filter(R9, cfg.filters.signals, out, labels,
                           cfg.filters.excluded_signals)
    prog += thread_filter(cfg, out, labels)
    prog += [
        asm.ldx(DW, R3, R6, act.offset),
        asm.jmp_imm("JEQ", R3, 0, out),  # a query: nothing changes
        asm.mov64_reg(R1, R10),
        asm.alu64_imm("ADD", R1, STACK_KEY),
        asm.mov64_imm(R2, 8),
        asm.call("probe_read_user"),
        asm.jmp_imm("JNE", R0, 0, out),
        asm.ldx(DW, R8, R10, STACK_KEY),
        asm.jmp_imm("JGT", R8, 1, out),  # a real handler never flushes
    ]
    prog += record_header(rec.KIND_SIGACTION)
    prog += [asm.stx(W, R10, R9, STACK_RECORD + _f("sig")),
             asm.stx(DW, R10, R8, STACK_RECORD + _f("ret"))]
    prog += write_record(cfg, labels)
    return prog + epilogue(out)


def build_fate_programs(
    cfg: ProbeConfig, formats: dict[str, EventFormat], layout: ExitLayout | None
) -> list[tuple[str, str, str, list]]:
    """(program name, system, event, instructions) for every fate program; `formats` maps an
    event name to its tracefs format; `layout` from exit_layout()."""
    builders = {
        "signal_deliver": lambda fmt: build_signal_deliver(cfg, fmt),
        "sched_process_exit": lambda fmt: build_process_exit(cfg, fmt, layout),
        "sys_exit_rt_sigtimedwait": lambda fmt: build_sigtimedwait_exit(cfg, fmt),
        "sys_enter_rt_sigaction": lambda fmt: build_sigaction_enter(cfg, fmt),
    }
    return [(name, system, event, builders[event](formats[event]))
            for name, system, event in FATE_TRACEPOINTS]
