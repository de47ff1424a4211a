"""A record's container context, read in the kernel at the event: the sender's cgroup v2 id and
both sides' pids in their own (innermost) pid namespace.

* ``sender_cgroup``: what ``bpf_get_current_cgroup_id()`` returns (kernel/bpf/helpers.c: the
  kernfs node id of the current task's cgroup in the default, v2, hierarchy; 4.18), on every
  CALL, FANOUT (copied from its parked CALL) and KERNEL record; read through the BTF-typed
  current task with direct loads where the program has it, else by the helper.
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

The --cgroup/--container filters (``Filters.cgroups``: (id, level) pairs) compare, for the
sender and for the recipient, the id of the task's cgroup ancestor at each level with the
filter's ids: ``task->cgroups->dfl_cgrp``, then ``level`` and ``ancestor_ids[]`` or
``ancestors[]`` (include/linux/cgroup-defs.h; which one is a BTF fact, ``cgroup_layout``).
The sender is matched when its call enters (FLAG_SENDER_IN_CGROUP on the parked call), the
recipient in signal_generate; exit drops a call whose sender is outside and none of whose
recipients was kept. Without the filter these builders add no instruction.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from sigscope.bpf import asm, btf_scan, features
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R6, R8, R10, W
from sigscope.errors import SetupError
from sigscope.model import record as rec
from sigscope.model.record import offset as _f
from sigscope.programs.common import STACK_SCRATCH, STACK_TASK, Labels, read_kernel_value

# kernel/pid_namespace.c: MAX_PID_NS_LEVEL, the deepest pid namespace nesting the kernel allows
# (a struct pid's level is at most this); it bounds the numbers[] index for the verifier.
MAX_PID_NS_LEVEL = 32
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


def sender_context(base: int, off0: int, spilled: bool, cgroups: frozenset[tuple[int, int]],
                   labels: Labels) -> list:
    """sys_enter: everything this module adds to a parked call at base+off0 (its sender ids
    and flags already written): sender_cgroup, the sender's pid-namespace ids
    (sender_ns_ids) and FLAG_SENDER_IN_CGROUP (mark_sender_in_cgroups). Clobbers r0-r5."""
    # sender_ns_ids leaves the task at STACK_TASK (where there is a layout to read it with).
    on_stack = spilled or pid_layout() is not None
    return [*sender_cgroup(base, off0, labels, spilled),
            *sender_ns_ids(base, off0, spilled, labels),
            *mark_sender_in_cgroups(cgroups, base, off0, labels, on_stack)]


def sender_cgroup(base: int, off0: int, labels: Labels, task_on_stack: bool = False) -> list:
    """sender_cgroup of the record at base+off0: what bpf_get_current_cgroup_id() returns,
    ``task_dfl_cgroup(current)->kn->id`` (kernel/bpf/helpers.c, include/linux/cgroup.h).
    `task_on_stack`: the BTF-typed current task is at STACK_TASK, and the chain
    task->cgroups->dfl_cgrp->kn->id is read with direct loads (cgroup_layout), which cost
    less than the helper call (bench/README.md); a NULL on the way leaves 0, unknown. Else,
    or without the layout, the helper. base must survive helper calls. Clobbers r0-r5."""
    at = off0 + _f("sender_cgroup")
    layout = cgroup_layout() if task_on_stack else None
    if layout is None:
        return [asm.call("get_current_cgroup_id"), asm.stx(DW, base, R0, at)]
    done = labels("sender_cgroup_done")
    prog = [asm.st(DW, base, at, 0), asm.ldx(DW, R1, R10, STACK_TASK)]
    for off in (layout.task_cgroups, layout.dfl_cgrp, layout.kn):
        prog += [asm.ldx(DW, R1, R1, off), asm.jmp_imm("JEQ", R1, 0, done)]
    return [*prog, asm.ldx(DW, R1, R1, layout.kn_id), asm.stx(DW, base, R1, at),
            asm.label(done)]


def _ns_nr(layout: PidLayout, btf: bool, base: int, at: int, host_at: int, unknown: str,
           labels: Labels, flag_nested_at: int | None = None) -> list:
    """With r1 = a task pointer (BTF-typed when `btf`, else a plain address, read through
    bpf_probe_read_kernel): the u32 at base+at = task->thread_pid->numbers[level].nr, or at
    level 0 the u32 at base+host_at (the host id the record already holds); jump to
    `unknown` (the field left as it is) on a NULL pid or a level above MAX_PID_NS_LEVEL.
    `flag_nested_at`: the u32 flags at base+flag_nested_at get FLAG_SENDER_NESTED_PIDNS
    when the level is above 0. base must survive helper calls. Clobbers r0-r5."""
    host, read = labels("ns_host"), labels("ns_read")
    if btf:
        prog = [asm.ldx(DW, R2, R1, layout.thread_pid), asm.jmp_imm("JEQ", R2, 0, unknown),
                asm.ldx(W, R3, R2, layout.pid_level)]
    else:
        prog = [*read_kernel_value(R1, layout.thread_pid, unknown),
                asm.jmp_imm("JEQ", R0, 0, unknown),
                asm.stx(DW, R10, R0, STACK_SCRATCH),
                *read_kernel_value(R0, layout.pid_level, unknown, size=4),
                asm.mov64_reg(R3, R0),
                asm.ldx(DW, R2, R10, STACK_SCRATCH)]
    prog.append(asm.jmp_imm("JEQ", R3, 0, host))
    if flag_nested_at is not None:
        prog += [asm.ldx(W, R4, base, flag_nested_at),
                 asm.alu32_imm("OR", R4, rec.FLAG_SENDER_NESTED_PIDNS),
                 asm.stx(W, base, R4, flag_nested_at)]
    return [
        *prog,
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
        *_ns_nr(layout, btf, base, at(f"{side}_ns_tid"), at(f"{side}_tid"), done_tid, labels,
                at("flags") if side == "sender" else None),
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
    STACK_SCRATCH. Clobbers r0-r5."""
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


# --- --cgroup / --container: a record matches when its sender's or recipient's cgroup is one of
# the filter's cgroups or below one --------------------------------------------------------------

class CgroupLayout(NamedTuple):
    """Byte offsets, from the kernel's BTF, of a task's cgroup v2 ancestry: task_struct cgroups
    (struct css_set *) -> css_set dfl_cgrp (struct cgroup *); struct cgroup level (int) and
    either ancestor_ids (u64[], the ancestors' ids indexed by level: the member of the 5.x
    kernels) or ancestors (struct cgroup *[], indexed by level: later ones), then struct
    cgroup kn -> kernfs_node id. Which of the two arrays the kernel has is read from its BTF;
    the other is None."""

    task_cgroups: int
    dfl_cgrp: int
    level: int
    kn: int
    kn_id: int
    ancestor_ids: int | None
    ancestors: int | None


@functools.cache
def cgroup_layout() -> CgroupLayout | None:
    """The offsets (btf_scan), or None without BTF or without either ancestor array."""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "css_set", "cgroup",
                                                "kernfs_node")
        cgroup = found["cgroup"]
        ids, ptrs = cgroup.get("ancestor_ids"), cgroup.get("ancestors")
        if ids is None and ptrs is None:
            return None
        return CgroupLayout(found["task_struct"]["cgroups"].offset,
                            found["css_set"]["dfl_cgrp"].offset, cgroup["level"].offset,
                            cgroup["kn"].offset, found["kernfs_node"]["id"].offset,
                            ids.offset if ids is not None else None,
                            ptrs.offset if ptrs is not None and ids is None else None)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None


def _by_level(cgroups: frozenset[tuple[int, int]]) -> dict[int, list[int]]:
    """{level: [cgroup ids]} of the filter's (id, level) pairs, in a fixed order."""
    levels: dict[int, list[int]] = {}
    for cgroup_id, level in sorted(cgroups, key=lambda pair: (pair[1], pair[0])):
        levels.setdefault(level, []).append(cgroup_id)
    return levels


def _id_is_one_of(reg: int, ids: list[int], match: str) -> list:
    """Jump to match when the u64 in reg is one of ids. Uses r1 (reg must not be r1)."""
    out: list = []
    for cgroup_id in ids:
        out += [*asm.ld_imm64(R1, cgroup_id), asm.jmp_reg("JEQ", reg, R1, match)]
    return out


def _task_in_cgroups(cgroups: frozenset[tuple[int, int]], layout: CgroupLayout, btf: bool,
                     load_task: list, match: str, labels: Labels) -> list:
    """Jump to match when the cgroup v2 of the task that `load_task` puts in r1 (BTF-typed
    when `btf`, else a plain address) is one of the (id, level) cgroups or below one: the id
    of its ancestor at that level is that id. Its own id at its own level is read like the
    chain to it (direct loads on a BTF-typed task); a deeper one's through the ancestor array
    with bpf_probe_read_kernel (a BTF-typed load may not index past the struct). Falls
    through otherwise, a NULL css_set or cgroup included. Uses STACK_SCRATCH. Clobbers
    r0-r5."""
    none = labels("cgroup_none")

    def load(dst: int, src: int, off: int, size: int = DW) -> list:
        """dst = the value at src+off (src a pointer known not NULL); none when unreadable."""
        if btf:
            return [asm.ldx(size, dst, src, off)]
        read = read_kernel_value(src, off, none, size=8 if size == DW else 4)
        return [*read, asm.mov64_reg(dst, R0)] if dst != R0 else read

    out = [*load_task,
           *load(R1, R1, layout.task_cgroups), asm.jmp_imm("JEQ", R1, 0, none),
           *load(R1, R1, layout.dfl_cgrp), asm.jmp_imm("JEQ", R1, 0, none),
           asm.stx(DW, R10, R1, STACK_SCRATCH)]
    for level, ids in _by_level(cgroups).items():
        following, deeper, compare = (labels("cgroup_level"), labels("cgroup_deeper"),
                                      labels("cgroup_compare"))
        out += [asm.ldx(DW, R2, R10, STACK_SCRATCH),
                *load(R3, R2, layout.level, W),
                asm.ldx(DW, R2, R10, STACK_SCRATCH),
                asm.jmp32_imm("JSLT", R3, level, following),   # above that level: no ancestor
                asm.jmp_imm("JNE", R3, level, deeper),
                *load(R2, R2, layout.kn), asm.jmp_imm("JEQ", R2, 0, following),
                *load(R0, R2, layout.kn_id),
                asm.ja(compare),
                asm.label(deeper)]
        if layout.ancestor_ids is not None:
            out += read_kernel_value(R2, layout.ancestor_ids + 8 * level, following)
        else:
            assert layout.ancestors is not None
            out += [*read_kernel_value(R2, layout.ancestors + 8 * level, following),
                    asm.jmp_imm("JEQ", R0, 0, following),
                    *read_kernel_value(R0, layout.kn, following),
                    asm.jmp_imm("JEQ", R0, 0, following),
                    *read_kernel_value(R0, layout.kn_id, following)]
        out += [asm.label(compare), *_id_is_one_of(R0, ids, match), asm.label(following)]
    return [*out, asm.label(none)]


def sender_in_cgroups(cgroups: frozenset[tuple[int, int]], match: str, labels: Labels,
                      task_on_stack: bool = False) -> list:
    """Jump to match when the current task's cgroup is in the filter (_task_in_cgroups: the
    task from bpf_get_current_task_btf where the kernel has it, else bpf_get_current_task;
    not bpf_get_current_ancestor_cgroup_id, which tracing programs lack on 5.10).
    `task_on_stack`: that task is already at STACK_TASK (no helper call). Raises SetupError
    without BTF (no layout: the filter could match nothing). Clobbers r0-r5."""
    layout = cgroup_layout()
    if layout is None:
        raise SetupError("--cgroup/--container need the kernel's BTF (/sys/kernel/btf/vmlinux): "
                         "a task's cgroup ancestry is read through it")
    btf = features.has("get_current_task_btf")
    if task_on_stack:
        load = [asm.ldx(DW, R1, R10, STACK_TASK)]
    else:
        load = [asm.call("get_current_task_btf" if btf else "get_current_task"),
                asm.mov64_reg(R1, R0)]
    return _task_in_cgroups(cgroups, layout, btf, load, match, labels)


def recipient_in_cgroups(cgroups: frozenset[tuple[int, int]], layout: CgroupLayout,
                         match: str, labels: Labels) -> list:
    """tp_btf signal_generate (r6 = ctx): jump to match when the recipient's cgroup is in the
    filter (_task_in_cgroups on the BTF-typed task argument). Clobbers r0-r5."""
    return _task_in_cgroups(cgroups, layout, True, [asm.ldx(DW, R1, R6, _ARG_TASK)], match,
                            labels)


def either_side_in_cgroups(cgroups: frozenset[tuple[int, int]], recipient: bool, fail: str,
                           labels: Labels) -> list:
    """KERNEL records in signal_generate: fall through when the sender's or (`recipient`:
    the tp_btf program, with a CgroupLayout) the recipient's cgroup is in the filter, else
    jump to fail. Nothing without the filter. Clobbers r0-r5."""
    if not cgroups:
        return []
    ok = labels("cgroup_ok")
    out = sender_in_cgroups(cgroups, ok, labels)
    layout = cgroup_layout() if recipient else None
    if layout is not None:
        out += recipient_in_cgroups(cgroups, layout, ok, labels)
    return [*out, asm.ja(fail), asm.label(ok)]


def mark_sender_in_cgroups(cgroups: frozenset[tuple[int, int]], base: int, off0: int,
                           labels: Labels, task_on_stack: bool = False) -> list:
    """sys_enter: set FLAG_SENDER_IN_CGROUP on the parked record at base+off0 (its flags
    already cleared) when the sender is in the filter's cgroups (`task_on_stack`: as for
    sender_in_cgroups). Nothing without the filter. Clobbers r0-r5."""
    if not cgroups:
        return []
    outside = labels("sender_outside")
    inside = labels("sender_inside")
    return [*sender_in_cgroups(cgroups, inside, labels, task_on_stack), asm.ja(outside),
            asm.label(inside),
            asm.st(W, base, off0 + _f("flags"), rec.FLAG_SENDER_IN_CGROUP),
            asm.label(outside)]


def recipient_of_call_in_cgroups(cgroups: frozenset[tuple[int, int]], recipient: bool,
                                 matched: str, skip: str, labels: Labels) -> list:
    """signal_generate, a recipient of the call parked in r8: jump to matched when the call's
    sender is in the filter (FLAG_SENDER_IN_CGROUP) or (`recipient`: tp_btf) the recipient
    is, else to skip. The tracefs program cannot know the recipient's cgroup: its recipients
    match by their sender alone. Clobbers r0-r5."""
    out = [asm.ldx(W, R1, R8, _f("flags")),
           asm.jmp_imm("JSET", R1, rec.FLAG_SENDER_IN_CGROUP, matched)]
    layout = cgroup_layout() if recipient else None
    if layout is not None:
        out += recipient_in_cgroups(cgroups, layout, matched, labels)
    return [*out, asm.ja(skip)]


def call_in_cgroups(cgroups: frozenset[tuple[int, int]], drop: str, labels: Labels) -> list:
    """sys_exit, the call parked in r8: fall through when its sender is in the filter or a
    recipient was kept (one in the filter: ngen counts only those), else jump to drop. A send
    that generated nothing can match only by its sender. Nothing without the filter.
    Clobbers r1."""
    if not cgroups:
        return []
    keep = labels("cgroup_keep")
    return [asm.ldx(W, R1, R8, _f("flags")),
            asm.jmp_imm("JSET", R1, rec.FLAG_SENDER_IN_CGROUP, keep),
            asm.ldx(W, R1, R8, _f("ngen")), asm.jmp_imm("JNE", R1, 0, keep),
            asm.ja(drop), asm.label(keep)]
