"""A signal syscall read from the sender's saved user registers: two probes per signal, not three.

Where the kernel allows it (regs_layout()), no ``sys_enter_<call>`` program is attached. The
call's number and arguments are in the current task's saved user registers (the struct pt_regs
at the top of its kernel stack, ``bpf_task_pt_regs(bpf_get_current_task_btf())``), so:

* signal_generate, finding no call parked for the current thread, reads the registers. When the
  thread is inside one of the traced signal syscalls (and that call has not returned yet) for
  the same signal, it applies the entry filters and claims and parks the call exactly as
  ``sys_enter_<call>`` would have (programs/signal.py), then attributes the recipient to it.
  Otherwise the existing rules apply: a KERNEL record, or nothing.
* ``sys_exit_<call>`` finishes a parked call as before. A call that generated nothing (it
  failed, signal 0, an empty process group) was never parked: its CALL record is built here,
  from the registers, with the same entry filters. So every send attempt is still one record.

"Inside the call, not yet returned" from the registers alone (arch/*/include/asm/ptrace.h,
syscall_get_nr / syscall_get_arguments in asm/syscall.h):

* x86_64: ``orig_ax`` is the syscall number and ``ax`` holds -ENOSYS from entry until the return
  value replaces it (entry_SYSCALL_64 pushes -ENOSYS; do_syscall_64 stores the result). An
  interrupt or exception from user space leaves the vector or error code in orig_ax, and the
  user's rax in ax. Arguments: di, si, dx, r10. A 32-bit (ia32) call is told by TS_COMPAT in
  thread_info.status: its numbers and registers differ, and the syscall tracepoints ignore it.
* arm64: ``syscallno`` is the number (kernel_entry sets NO_SYSCALL, -1, on every exception from
  user space; el0_svc sets the call's), ``orig_x0`` the first argument as it came in; ``regs[0]``
  is that same value until the return value replaces it. Arguments: orig_x0, regs[1], regs[2].
  A 32-bit task is told by TIF_32BIT in thread_info.flags. Limit: a call whose return value
  equals its first argument (kill(0, sig) -> 0) cannot be told from one still running, so a
  signal of the same number that the kernel generates from the thread's own context after the
  call's exit and before it is back in user space (a stop or an exit in the same return path)
  is taken for one of the call's recipients; the three-probe path does not have this limit.

Like the three-probe path, an interrupt that generates the call's own signal number while the
thread is inside the call is attributed to the call (the thread is in the call either way).
When no in-flight slot can be claimed (COUNTER_INFLIGHT_FULL, counted), the signal is reported
as the kernel's, as on the three-probe path; unlike it, the exit then still writes the call,
as one that generated nothing (the three-probe path writes no CALL record for it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from sigscope.bpf import arch, asm, btf_scan, features
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R6, R8, R9, R10, W
from sigscope.bpf.tracefs import event_format
from sigscope.model import record as rec
from sigscope.model.record import offset as _f
from sigscope.programs import context
from sigscope.programs.common import STACK_RECORD, STACK_TASK, Labels

# include/uapi/asm-generic/errno-base.h / errno.h
ENOSYS = 38
# arch/x86/include/asm/thread_info.h: thread_info.status bit "32bit syscall active".
TS_COMPAT = 0x0002
# arch/arm64/include/asm/thread_info.h: thread_info.flags bit of a 32-bit (AArch32) task.
TIF_32BIT = 22


class RegsLayout(NamedTuple):
    """Where the running kernel keeps a syscall in struct pt_regs (byte offsets, from BTF)."""

    machine: str             # arch.normalized_machine(): "x86_64" or "aarch64"
    nr: int                  # x86_64 orig_ax (8 bytes), arm64 syscallno (s32)
    nr_size: int
    args: tuple[int, int, int]   # the first three arguments as they came in
    running: tuple[int, int]     # x86_64 (ax, ax): ax is -ENOSYS; arm64 (regs[0], orig_x0):
                                 # both equal, until the return value replaces regs[0]
    compat: tuple[int, int]      # (offset in task_struct of the thread_info word, bit mask)
    numbers: dict[str, int]      # call -> syscall number (bpf/arch.py)


def _thread_info_word(task: dict, info: dict, name: str) -> int:
    """Offset in task_struct of thread_info.<name> (THREAD_INFO_IN_TASK: thread_info is the
    task's first member on x86_64 and arm64)."""
    return task["thread_info"].offset + info[name].offset


@functools.cache
def regs_layout() -> RegsLayout | None:
    """The layout where this kernel lets the signal probes read a call from the registers:
    features task_pt_regs (5.15), get_current_task_btf (5.11), bpf_atomics (5.12: the
    cmpxchg claim) and BTF with struct pt_regs and thread_info on x86_64 or arm64; else None."""
    if not all(features.has(name) for name in ("task_pt_regs", "get_current_task_btf",
                                                "bpf_atomics")):
        return None
    machine = arch.normalized_machine()
    numbers = arch.syscall_numbers(machine)._asdict()
    calls = {call: numbers[call] for call in rec.SYSCALL_VIAS}
    try:
        if machine == "x86_64":
            found = btf_scan.vmlinux_struct_members("pt_regs", "task_struct", "thread_info")
            regs = found["pt_regs"]
            names = ("di", "si", "dx", "ax", "orig_ax")
            if any(regs[n].span < 8 for n in names):
                return None
            return RegsLayout(machine, regs["orig_ax"].offset, 8,
                              (regs["di"].offset, regs["si"].offset, regs["dx"].offset),
                              (regs["ax"].offset, regs["ax"].offset),
                              (_thread_info_word(found["task_struct"], found["thread_info"],
                                                 "status"), TS_COMPAT), calls)
        if machine == "aarch64":
            found = btf_scan.vmlinux_struct_members("pt_regs", "user_pt_regs", "task_struct",
                                                    "thread_info")
            regs, user = found["pt_regs"], found["user_pt_regs"]
            # regs[] is in an anonymous union at the start of pt_regs (the scan does not list
            # anonymous members), whose other member is struct user_pt_regs (same layout): no
            # named member comes before orig_x0, which starts where user_pt_regs ends.
            user_end = user["pstate"].offset + user["pstate"].span
            first_named = min(m.offset for m in regs.values())
            if (user["regs"].offset != 0 or user["regs"].span < 8 * 31
                    or regs["orig_x0"].offset != user_end or first_named != user_end
                    or regs["orig_x0"].span < 8 or regs["syscallno"].span < 4):
                return None
            return RegsLayout(machine, regs["syscallno"].offset, 4,
                              (regs["orig_x0"].offset, 8, 16), (0, regs["orig_x0"].offset),
                              (_thread_info_word(found["task_struct"], found["thread_info"],
                                                 "flags"), 1 << TIF_32BIT), calls)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None
    return None


def arg_index(call: str, fmt_field: str) -> int:
    """The position (0-based) of argument `fmt_field` of syscall `call`: its rank among the
    argument fields of tracefs' sys_enter_<call> format (after __syscall_nr), which lists them
    in the order of the syscall's definition (SYSCALL_DEFINEn)."""
    fields = event_format("syscalls", f"sys_enter_{call}").fields
    args = sorted((f.offset, name) for name, f in fields.items()
                  if not name.startswith("common_") and name != "__syscall_nr")
    return [name for _off, name in args].index(fmt_field)


def _sext32(reg: int) -> list:
    return [asm.alu64_imm("LSH", reg, 32), asm.alu64_imm("ARSH", reg, 32)]


def current_regs(task_on_stack: bool = False) -> list:
    """The current task at STACK_TASK, r0 = its saved user registers (struct pt_regs *,
    BTF-typed). `task_on_stack`: the task is there already (task.task_prologue). Clobbers
    r1-r5."""
    if task_on_stack:
        return [asm.ldx(DW, R1, R10, STACK_TASK), asm.call("task_pt_regs")]
    return [asm.call("get_current_task_btf"), asm.stx(DW, R10, R0, STACK_TASK),
            asm.mov64_reg(R1, R0), asm.call("task_pt_regs")]


def _arg(layout: RegsLayout, dst: int, regs: int, index: int) -> list:
    """dst = argument `index` (0-2) as the syscall's int, sign-extended to 64 bits."""
    return [asm.ldx(DW, dst, regs, layout.args[index]), *_sext32(dst)]


def stage_args(layout: RegsLayout, call: str, regs: int, at: int) -> list:
    """The call's record arguments (signal.SYSCALL_ARGS) from the registers at `regs` into the
    record at r10+at, as sys_enter_<call> stores them. Uses r1."""
    from sigscope.programs.signal import SYSCALL_ARGS

    prog: list = []
    for rec_field, fmt_field in SYSCALL_ARGS[call].items():
        prog += _arg(layout, R1, regs, arg_index(call, fmt_field))
        prog.append(asm.stx(W if rec_field == "arg_pidfd" else DW, R10, R1, at + _f(rec_field)))
    return prog


def copy_args(call: str, base: int, off0: int, at: int) -> list:
    """The arguments staged at r10+at into the record at base+off0. Uses r1."""
    from sigscope.programs.signal import SYSCALL_ARGS

    prog: list = []
    for rec_field in SYSCALL_ARGS[call]:
        size = W if rec_field == "arg_pidfd" else DW
        prog += [asm.ldx(size, R1, R10, at + _f(rec_field)),
                 asm.stx(size, base, R1, off0 + _f(rec_field))]
    return prog


def _in_call(layout: RegsLayout, calls: tuple[str, ...], regs: int, outside: str,
             labels: Labels) -> tuple[list, dict[str, str]]:
    """Jump to outside unless the current thread is in one of `calls` and it has not returned
    (module docstring), nor a 32-bit task; else to the label of its call. Expects the task at
    STACK_TASK. Uses r1-r3. Returns (instructions, call -> label)."""
    run_a, run_b = layout.running
    compat_at, compat_bit = layout.compat
    prog = [asm.ldx(DW, R3, R10, STACK_TASK), asm.ldx(W, R1, R3, compat_at),
            asm.jmp_imm("JSET", R1, compat_bit, outside)]
    if layout.machine == "x86_64":
        prog += [asm.ldx(DW, R1, regs, run_a), asm.jmp_imm("JNE", R1, -ENOSYS, outside)]
    else:
        prog += [asm.ldx(DW, R1, regs, run_a), asm.ldx(DW, R2, regs, run_b),
                 asm.jmp_reg("JNE", R1, R2, outside)]
    prog.append(asm.ldx(DW if layout.nr_size == 8 else W, R1, regs, layout.nr))
    if layout.nr_size == 4:
        prog += _sext32(R1)
    targets = {call: labels(f"in_{call}") for call in calls}
    prog += [asm.jmp_imm("JEQ", R1, layout.numbers[call], targets[call]) for call in calls]
    return [*prog, asm.ja(outside)], targets


def _sig_index(call: str) -> int:
    return arg_index(call, "sig")


def park_at_generate(cfg, layout: RegsLayout, src, parked: str, kernel: str, out: str,
                     labels: Labels) -> list:
    """signal_generate with no call parked for the current thread: the registers decide
    (module docstring). Inside a traced call for the generated signal whose sender passes the
    entry filters, the call is claimed and parked in r8 and control goes to `parked`; a sender
    left out by the filters goes to `out` (the kernel branch would drop it by the same filters);
    anything else goes to `kernel`. Expects r6 = ctx, r7 = pid_tgid and the current task
    at STACK_TASK (task.task_prologue)."""
    from sigscope.programs import signal as sp
    from sigscope.programs.task import task_sender_to_stack

    calls = sp.syscalls_to_trace(cfg.filters)
    f = cfg.filters
    prog = [*current_regs(task_on_stack=True), asm.mov64_reg(R8, R0)]
    checks, targets = _in_call(layout, calls, R8, kernel, labels)
    prog += checks
    full = labels("inflight_full")
    for call in calls:
        suppressed = call not in f.vias
        prog += [asm.label(targets[call]),
                 *_arg(layout, R9, R8, _sig_index(call)),
                 *sp._gen_sig(src, R1),
                 asm.jmp32_reg("JNE", R9, R1, kernel),  # another signal: the kernel's own
                 *sp._sender_filters(cfg, out, labels),
                 *sp.signal_filter(R9, f.signals, out, labels, f.excluded_signals),
                 *task_sender_to_stack(cfg.task, f.comm_bytes(), out, labels),
                 *stage_args(layout, call, R8, STACK_RECORD),
                 *sp._claim_inflight(cfg, full, labels),
                 *sp._copy_sender_comm(),
                 *sp._fill_call(R8, 0, call, None, suppressed, uid_on_stack=True),
                 *copy_args(call, R8, 0, STACK_RECORD),
                 *context.sender_context(R8, 0, True, f.cgroups, labels),
                 asm.ja(parked)]
    # No slot: counted; its signal is then taken for the kernel's, as when sys_enter found none.
    prog += [*sp._inflight_full(cfg, full, labels), asm.ja(kernel)]
    return prog


def exit_unparked(cfg, layout: RegsLayout, call: str, ret_offset: int) -> Callable[[Labels, str],
                                                                                   list]:
    """sys_exit_<call> when nothing was parked (the call generated no signal): its CALL
    record from the registers, if it passes the entry filters (and -x, and -T by its
    arguments, as a parked call without recipients would). Expects r6 = ctx, r7 = pid_tgid."""
    from sigscope.programs import signal as sp
    from sigscope.programs.task import task_sender_to_stack

    def build(labels: Labels, out: str) -> list:
        f = cfg.filters
        if call not in f.vias:
            return [asm.ja(out)]
        prog = [*current_regs(), asm.mov64_reg(R8, R0),
                *_arg(layout, R9, R8, _sig_index(call)),
                *sp._sender_filters(cfg, out, labels),
                *sp.signal_filter(R9, f.signals, out, labels, f.excluded_signals)]
        if f.failed_only:
            prog += [asm.ldx(DW, R1, R6, ret_offset), asm.jmp_imm("JSGE", R1, 0, out)]
        prog += [*sp.zero_stack_record()]
        prog += task_sender_to_stack(cfg.task, f.comm_bytes(), out, labels)
        if f.cgroups:  # a send that generated nothing matches --cgroup by its sender alone
            keep = labels("cgroup_keep")
            prog += [*context.sender_in_cgroups(f.cgroups, keep, labels, task_on_stack=True),
                     asm.ja(out), asm.label(keep)]
        # _fill_call clears the arguments: they are kept in r8's registers and put back after.
        prog += [*sp._fill_call(R10, STACK_RECORD, call, None, False, uid_on_stack=True),
                 *context.sender_cgroup(R10, STACK_RECORD, labels, task_on_stack=True),
                 *context.sender_ns_ids(R10, STACK_RECORD, True, labels),
                 *stage_args(layout, call, R8, STACK_RECORD)]
        if f.target_ids:  # -T by the arguments, as a parked call without recipients
            keep = labels("target_keep")
            prog += [*sp.args_match_targets(R10, STACK_RECORD, f.target_ids, keep, out),
                     asm.label(keep)]
        prog += [asm.ldx(DW, R1, R6, ret_offset), asm.stx(DW, R10, R1, STACK_RECORD + _f("ret")),
                 asm.mov64_reg(R9, R10), asm.alu64_imm("ADD", R9, STACK_RECORD),
                 *cfg.output.write(R9, labels), asm.ja(out)]
        return prog

    return build


def uses_regs(cfg) -> RegsLayout | None:
    """The layout when the probes of `cfg` take the two-probe path: the kernel allows it
    (regs_layout()), the sender is read from its task (cfg.task), the claim is cmpxchg, and
    cfg.entry_probes does not ask for the sys_enter probes; else None."""
    return None if cfg.entry_probes else allowed(cfg.task, cfg.claim)


def allowed(task: object | None, claim: str) -> RegsLayout | None:
    """regs_layout() when the sender is read from its task (`task`: a task.TaskLayout) and
    calls are claimed by cmpxchg (`claim`: signal.CLAIM_*); else None."""
    from sigscope.programs.signal import CLAIM_CMPXCHG

    if task is None or claim != CLAIM_CMPXCHG:
        return None
    return regs_layout()

