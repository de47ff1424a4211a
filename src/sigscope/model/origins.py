"""Why the kernel generated a signal (``origin`` of a ``via=kernel`` event): every origin is
defined here, once, with its meaning and the evidence it is read from.

Most origins follow from the signal and its si_code (include/uapi/asm-generic/siginfo.h):
a SIGSEGV with SEGV_MAPERR is a fault, a SIGCHLD is about a child. A SIGKILL says nothing by
itself: the OOM killer, a CPU-time limit, a dying pid namespace, cgroup.kill and a dying parent
all send a bare SIGKILL (si_code SI_KERNEL or SI_USER). For a kernel-generated SIGKILL the
signal_generate probe therefore takes the kernel stack of the generating path
(bpf_get_stackid, programs/origin.py), and user space names the function that asked for the
signal: the first frame below the signal-sending functions (``SIGNAL_SENDING``). Only the
functions in ``KILLERS`` give an origin; any other path is ``other``, never a guess.

Each entry of ``KILLERS`` was checked in the kernel sources (mm/oom_kill.c,
kernel/time/posix-cpu-timers.c, kernel/pid_namespace.c, kernel/cgroup/cgroup.c,
kernel/exit.c, kernel/ptrace.c) and seen in a real stack on 6.18 (tests/kernel/
test_kill_origins.py). Static functions the compiler inlines do not appear in stacks, so
every function of the path that may be a frame of its own on some build is listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Every origin, in the order documented in the README, with its meaning.
ORIGIN_MEANINGS: Mapping[str, str] = {
    "fault": "SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGTRAP from a fault of the receiving thread "
             "(si_code > 0 or SI_KERNEL)",
    "child": "SIGCHLD: a child exited, was killed, stopped or continued",
    "timer": "SIGALRM, SIGVTALRM, SIGPROF from an interval timer, or any signal of a POSIX "
             "timer (SI_TIMER)",
    "pipe": "SIGPIPE: a write to a pipe or socket nobody reads",
    "tty": "SIGINT, SIGQUIT, SIGTSTP, SIGHUP, SIGWINCH, SIGCONT, SIGTTIN, SIGTTOU from the "
           "terminal (SI_KERNEL)",
    "rlimit": "a resource limit: SIGXCPU (RLIMIT_CPU or RLIMIT_RTTIME soft limit), SIGXFSZ "
              "(RLIMIT_FSIZE), and the SIGKILL of a RLIMIT_CPU or RLIMIT_RTTIME hard limit "
              "(kernel stack: the POSIX CPU timer checks)",
    "oom": "the SIGKILL of the OOM killer, system-wide or of a memory cgroup (kernel stack: "
           "__oom_kill_process)",
    "pid_namespace": "the SIGKILL the kernel sends every process of a pid namespace when its "
                     "init exits (kernel stack: zap_pid_ns_processes): a container's "
                     "processes when it stops",
    "cgroup_kill": "the SIGKILL of a write to a cgroup v2 cgroup.kill file (kernel stack: "
                   "__cgroup_kill): systemd and container runtimes stopping a unit",
    "parent_death": "the SIGKILL a process asked for with prctl(PR_SET_PDEATHSIG) when its "
                    "parent thread exits (kernel stack: do_exit reparenting the children)",
    "ptrace": "the SIGKILL of ptrace(PTRACE_KILL) (kernel stack: ptrace_request)",
    "seccomp": "SIGSYS from a seccomp filter (SYS_SECCOMP)",
    "io": "SIGIO, SIGURG, or a signal with a POLL_* reason (fcntl F_SETSIG)",
    "other": "any other kernel-generated signal, including every SIGKILL whose path is not one "
             "of the above (or whose stack could not be read): the kernel did not say why",
}
ORIGINS = tuple(ORIGIN_MEANINGS)

# The signal-sending functions of kernel/signal.c (and the tracing glue above them): skipped
# to find the caller that asked for the signal.
SIGNAL_SENDING = frozenset({
    "trace_event_raw_event_signal_generate", "perf_trace_signal_generate",
    "__traceiter_signal_generate", "__bpf_trace_signal_generate", "bpf_trace_run5",
    "trace_call_bpf", "perf_trace_run_bpf_submit", "bpf_get_stackid_tp",
    "__send_signal_locked", "send_signal_locked", "__send_signal", "send_signal",
    "do_send_sig_info", "group_send_sig_info", "__group_send_sig_info", "send_sig_info",
    "send_sig", "force_sig", "force_sig_info", "force_sig_info_to_task", "force_fatal_sig",
    "force_exit_sig", "kill_pid_info", "kill_pid_info_type", "kill_proc_info",
    "__kill_pgrp_info", "kill_pgrp", "kill_pid", "send_signal_irq_work",
})

# A JITed BPF program's kallsyms name (kernel/bpf/core.c bpf_get_prog_name: bpf_prog_<tag>_
# <name>): the tp_btf signal_generate program itself is the innermost frame of its stacks.
BPF_PROGRAM_PREFIX = "bpf_prog_"

# The function that asked for a kernel SIGKILL -> its origin.
KILLERS: Mapping[str, str] = {
    # mm/oom_kill.c: __oom_kill_process() sends SIGKILL to the victim (and to every process
    # sharing its mm); reached from out_of_memory() and, for memory.oom.group, from
    # oom_kill_memcg_member().
    "__oom_kill_process": "oom",
    "oom_kill_process": "oom",
    "oom_kill_memcg_member": "oom",
    "out_of_memory": "oom",
    # kernel/time/posix-cpu-timers.c: check_rlimit() from check_process_timers() (RLIMIT_CPU)
    # and check_thread_timers() (RLIMIT_RTTIME), under handle_posix_cpu_timers(), run from
    # the task work posix_cpu_timers_work() (CONFIG_POSIX_CPU_TIMERS_TASK_WORK) or from the
    # tick's run_posix_cpu_timers(). (A POSIX CPU timer's own signal has SI_TIMER: "timer".)
    "check_rlimit": "rlimit",
    "check_process_timers": "rlimit",
    "check_thread_timers": "rlimit",
    "handle_posix_cpu_timers": "rlimit",
    "posix_cpu_timers_work": "rlimit",
    "run_posix_cpu_timers": "rlimit",
    # kernel/pid_namespace.c
    "zap_pid_ns_processes": "pid_namespace",
    # kernel/cgroup/cgroup.c (5.14+): cgroup_kill_write() -> cgroup_kill() -> __cgroup_kill()
    "__cgroup_kill": "cgroup_kill",
    "cgroup_kill": "cgroup_kill",
    "cgroup_kill_write": "cgroup_kill",
    # kernel/exit.c: forget_original_parent() sends each child's pdeath_signal; it and
    # exit_notify() are static and inlined into do_exit() on 6.18. The only SIGKILL sent from
    # these functions themselves is a pdeath signal (zap_pid_ns_processes, reached from
    # find_child_reaper(), is a frame of its own).
    "forget_original_parent": "parent_death",
    "exit_notify": "parent_death",
    "do_exit": "parent_death",
    # kernel/ptrace.c: PTRACE_KILL sends SIGKILL since 5.19 (before, it resumed the tracee
    # with exit_code SIGKILL and generated nothing).
    "ptrace_request": "ptrace",
}


def symbol_base(name: str) -> str:
    """A symbol without the compiler's suffixes: "__oom_kill_process.cold" ->
    "__oom_kill_process" (also .isra.N, .constprop.N, .part.N)."""
    return name.split(".", 1)[0]


def origin_from_stack(functions: Iterable[str]) -> str | None:
    """The origin named by a kernel SIGKILL's stack (innermost frame first), or None when the
    function that asked for the signal is not one of KILLERS (or the stack is empty)."""
    for name in functions:
        base = symbol_base(name)
        if base in SIGNAL_SENDING or base.startswith(BPF_PROGRAM_PREFIX):
            continue
        return KILLERS.get(base)
    return None
