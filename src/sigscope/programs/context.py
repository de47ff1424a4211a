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

from sigscope.bpf import asm
from sigscope.bpf.asm import DW, R0
from sigscope.model.record import offset as _f


def sender_cgroup(base: int, off0: int) -> list:
    """sender_cgroup of the record at base+off0 = bpf_get_current_cgroup_id(). base must
    survive helper calls. Clobbers r0-r5."""
    return [asm.call("get_current_cgroup_id"),
            asm.stx(DW, base, R0, off0 + _f("sender_cgroup"))]
