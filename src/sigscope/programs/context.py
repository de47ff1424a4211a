"""A record's container context, read in the kernel at the event: the sender's cgroup v2 id and
both sides' pids in their own (innermost) pid namespace.

* ``sender_cgroup``: ``bpf_get_current_cgroup_id()`` (kernel/bpf/helpers.c: the kernfs node id
  of the current task's cgroup in the default, v2, hierarchy; 4.18), on every CALL, FANOUT
  (copied from its parked CALL) and KERNEL record.
* ``sender_ns_tgid``/``sender_ns_tid`` and, in the tp_btf signal_generate program,
  ``target_ns_tgid``/``target_ns_tid``: ``task->thread_pid->numbers[level].nr`` for the thread and
  the same through ``task->group_leader`` for the process, where ``level`` is
  ``thread_pid->level`` (include/linux/pid.h; kernel/pid.c ``pid_nr_ns``: what
  ``task_pid_vnr`` returns inside the task's own namespace). At level 0 (the initial pid
  namespace) ``numbers[0].nr`` is the host id the record already holds (kernel/fork.c sets
  ``p->pid = pid_nr(pid)``), so it is copied and costs no read.

Offsets come from the kernel's BTF (``pid_layout``). Where the task pointer is BTF-typed
(``bpf_get_current_task_btf``, 5.11; the tp_btf recipient) the pointers and the level are
direct loads; ``numbers[level]`` is read with ``bpf_probe_read_kernel`` because its index is
only known at run time (the verifier takes no variable offset into a BTF-typed pointer), and
so is everything on a kernel without ``bpf_get_current_task_btf`` (5.10). A level above
``MAX_PID_NS_LEVEL`` (kernel/pid_namespace.c: the kernel allows no deeper nesting), a NULL pid
(a task already released), a failed read, or no BTF at all leave 0: unknown, never a guess.
The tracefs signal_generate (no BTF) cannot know the recipient's and leaves 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from sigscope.bpf import asm, btf_scan, features
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R6, R10, W
from sigscope.model.record import offset as _f
from sigscope.programs.common import STACK_TASK, Labels, read_kernel_value

# kernel/pid_namespace.c: MAX_PID_NS_LEVEL, the deepest pid namespace nesting the kernel allows
# (a struct pid's level is at most this); it bounds the numbers[] index for the verifier.
MAX_PID_NS_LEVEL = 32
# A stack slot for a struct pid pointer read with bpf_probe_read_kernel (the non-BTF-typed path),
# just below the programs' own (common.STACK_USED); free again before any output step runs.
_STACK_PID = STACK_TASK - 8
# Argument slot of the raw signal_generate tracepoint holding the recipient task (the third
# u64 of TP_PROTO(sig, info, task, group, result), include/trace/events/signal.h).
_ARG_TASK = 16


class PidLayout(NamedTuple):
    """Byte offsets, from the kernel's BTF, of the chain to a task's pid in its own pid
    namespace: task_struct thread_pid (struct pid *) and group_leader (struct task_struct *);
    struct pid level (unsigned int) and numbers (struct upid[]); struct upid nr (int), and the
    size of one struct upid (the stride of numbers[])."""

    thread_pid: int
    group_leader: int
    pid_level: int
    pid_numbers: int
    upid_nr: int
    upid_size: int


@functools.cache
def pid_layout() -> PidLayout | None:
    """The offsets, from a targeted BTF scan (btf_scan); None without BTF (SIGSCOPE_NO_BTF
    included) or when a member is missing or smaller than the record field it fills."""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "pid", "upid")
        task, pid, upid = found["task_struct"], found["pid"], found["upid"]
        spans = ((task["thread_pid"], 8), (task["group_leader"], 8), (pid["level"], 4),
                 (upid["nr"], 4))
        if any(member.span < size for member, size in spans):
            return None
        # upid's last member reaches to the end of the struct: its size, the array's stride.
        size = max(m.offset + m.span for m in upid.values())
        return PidLayout(task["thread_pid"].offset, task["group_leader"].offset,
                         pid["level"].offset, pid["numbers"].offset, upid["nr"].offset, size)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None


def sender_cgroup(base: int, off0: int) -> list:
    """sender_cgroup of the record at base+off0 = bpf_get_current_cgroup_id(). base must
    survive helper calls. Clobbers r0-r5."""
    return [asm.call("get_current_cgroup_id"),
            asm.stx(DW, base, R0, off0 + _f("sender_cgroup"))]


def _ns_nr(layout: PidLayout, btf: bool, base: int, at: int, host_at: int, unknown: str,
           labels: Labels) -> list:
    """With r1 = a task pointer (BTF-typed when `btf`, else a plain address, read through
    bpf_probe_read_kernel): the u32 at base+at = task->thread_pid->numbers[level].nr, or at
    level 0 the u32 at base+host_at (the host id the record already holds); jump to
    `unknown` (the field left as it is) on a NULL pid or a level above MAX_PID_NS_LEVEL.
    base must survive helper calls. Clobbers r0-r5."""
    host, read = labels("ns_host"), labels("ns_read")
    if btf:
        prog = [asm.ldx(DW, R2, R1, layout.thread_pid), asm.jmp_imm("JEQ", R2, 0, unknown),
                asm.ldx(W, R3, R2, layout.pid_level)]
    else:
        prog = [*read_kernel_value(R1, layout.thread_pid, unknown),
                asm.jmp_imm("JEQ", R0, 0, unknown),
                asm.stx(DW, R10, R0, _STACK_PID),
                *read_kernel_value(R0, layout.pid_level, unknown, size=4),
                asm.mov64_reg(R3, R0),
                asm.ldx(DW, R2, R10, _STACK_PID)]
    return [
        *prog,
        asm.jmp_imm("JEQ", R3, 0, host),
        asm.jmp_imm("JGT", R3, MAX_PID_NS_LEVEL, unknown),
        asm.alu64_imm("MUL", R3, layout.upid_size),
        asm.alu64_imm("ADD", R3, layout.pid_numbers + layout.upid_nr),
        asm.alu64_reg("ADD", R3, R2),
        asm.ja(read),
        asm.label(host),
        asm.ldx(W, R1, base, host_at),
        asm.stx(W, base, R1, at),
        asm.ja(unknown),
        asm.label(read),
        asm.mov64_reg(R1, base),
        asm.alu64_imm("ADD", R1, at),
        asm.mov64_imm(R2, 4),
        asm.call("probe_read_kernel"),  # zeroes the field when the read fails: unknown
    ]


def _ns_ids(layout: PidLayout, btf: bool, load_task: list, base: int, off0: int, side: str,
            labels: Labels) -> list:
    """`side`_ns_tid and `side`_ns_tgid of the record at base+off0 from the task that
    `load_task` puts in r1 (it may use only r0-r5 and the stack), the tgid through its
    group_leader. Clobbers r0-r5."""
    done_tid, done = labels("ns_tid_done"), labels("ns_done")

    def at(name: str) -> int:
        return off0 + _f(name)

    if btf:
        leader = [*load_task, asm.ldx(DW, R1, R1, layout.group_leader),
                  asm.jmp_imm("JEQ", R1, 0, done)]
    else:
        leader = [*load_task, *read_kernel_value(R1, layout.group_leader, done),
                  asm.jmp_imm("JEQ", R0, 0, done), asm.mov64_reg(R1, R0)]
    return [
        # Cleared first: a FANOUT record starts as a copy of its call's first recipient.
        asm.st(W, base, at(f"{side}_ns_tid"), 0),
        asm.st(W, base, at(f"{side}_ns_tgid"), 0),
        *load_task,
        *_ns_nr(layout, btf, base, at(f"{side}_ns_tid"), at(f"{side}_tid"), done_tid, labels),
        asm.label(done_tid),
        *leader,
        *_ns_nr(layout, btf, base, at(f"{side}_ns_tgid"), at(f"{side}_tgid"), done, labels),
        asm.label(done),
    ]


def sender_ns_ids(base: int, off0: int, spilled: bool, labels: Labels) -> list:
    """sender_ns_tid/sender_ns_tgid of the record at base+off0 (whose sender_tid and
    sender_tgid are already written): the current task's ids in its own pid namespace.
    `spilled`: the task from bpf_get_current_task_btf is already at STACK_TASK
    (programs/task.py task_prologue); else it is asked for here, BTF-typed where the kernel
    has that helper (feature get_current_task_btf, 5.11), else as a plain address
    (bpf_get_current_task, read through bpf_probe_read_kernel). Without BTF nothing is
    emitted and the fields stay 0 (unknown). Uses the stack slots at STACK_TASK and
    _STACK_PID. Clobbers r0-r5."""
    layout = pid_layout()
    if layout is None:
        return []
    task_btf = spilled or features.has("get_current_task_btf")
    prog: list = []
    if not spilled:
        prog += [asm.call("get_current_task_btf" if task_btf else "get_current_task"),
                 asm.stx(DW, R10, R0, STACK_TASK)]
    load = [asm.ldx(DW, R1, R10, STACK_TASK)]
    return [*prog, *_ns_ids(layout, task_btf, load, base, off0, "sender", labels)]


def target_ns_ids(base: int, off0: int, labels: Labels) -> list:
    """tp_btf signal_generate: target_ns_tid/target_ns_tgid of the record at base+off0
    (target_tid and target_tgid already written) from the recipient task, a BTF-typed
    argument (r6 = ctx). Without the layout nothing is emitted: 0, unknown. Clobbers r0-r5."""
    layout = pid_layout()
    if layout is None:
        return []
    load = [asm.ldx(DW, R1, R6, _ARG_TASK)]
    return _ns_ids(layout, True, load, base, off0, "target", labels)
