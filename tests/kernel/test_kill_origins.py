"""Why the kernel sent a SIGKILL, read from the kernel stack of the generating path, on real
kills: a RLIMIT_CPU and a RLIMIT_RTTIME hard limit, a pid namespace whose init exits, a memory
cgroup's OOM killer, cgroup.kill, PR_SET_PDEATHSIG and PTRACE_KILL. Each test kills a child of
its own and asserts on the kernel SIGKILL that child received."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import started
from kernel_features import require_feature

from sigscope.tracer import trace

SIGKILL = 9
SI_KERNEL, SI_USER = 0x80, 0
TIMEOUT = 20.0
libc = ctypes.CDLL(None, use_errno=True)


def kernel_kills_of(collector, pid: int) -> list:
    """Every kernel-generated SIGKILL to `pid` (waits for the first)."""
    return collector.wait_count(
        lambda e: e.via == "kernel" and e.sig == SIGKILL and pid in (e.target_pid, e.target_tid),
        timeout=TIMEOUT)


def kernel_kill_of(collector, pid: int):
    """The one kernel-generated SIGKILL to `pid` (waits for it)."""
    (event,) = kernel_kills_of(collector, pid)
    return event


def tracing_kills():
    return started(trace(signals=[SIGKILL], vias=["kernel"], buffer_size=1 << 20))


def test_rlimit_cpu_hard_limit() -> None:
    """`bash -c 'ulimit -t 1; while :; do :; done'`: killed at one second of CPU time."""
    collector = tracing_kills()
    try:
        proc = subprocess.Popen(["bash", "-c", "ulimit -t 1; while :; do :; done"])
        assert proc.wait(TIMEOUT) == -SIGKILL
        event = kernel_kill_of(collector, proc.pid)
    finally:
        collector.finish()
    assert (event.code, event.origin) == (SI_KERNEL, "rlimit")
    assert event.to_dict()["origin"] == "rlimit"


RTTIME_HOG = r"""
import os, resource
resource.setrlimit(resource.RLIMIT_RTTIME, (20_000, 20_000))  # microseconds without sleeping
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
while True:
    pass
"""


def test_rlimit_rttime_hard_limit() -> None:
    collector = tracing_kills()
    try:
        proc = subprocess.Popen([sys.executable, "-c", RTTIME_HOG])
        assert proc.wait(TIMEOUT) == -SIGKILL
        kernel_kills_of(collector, proc.pid)
    finally:
        collector.finish()
    kills = [e for e in collector.events
             if e.via == "kernel" and e.sig == SIGKILL and proc.pid in (e.target_pid, e.target_tid)]
    # The scheduler tick checks the limit again until the task has died
    # (kernel/time/posix-cpu-timers.c, check_thread_timers), so a second tick can re-send it:
    # the first SIGKILL is delivered; a later one finds it pending, or the group already exiting
    # (kernel/signal.c, prepare_signal: SIGNAL_GROUP_EXIT), and is not delivered again.
    assert [(e.code, e.origin) for e in kills] == [(SI_KERNEL, "rlimit")] * len(kills)
    assert kills[0].outcome == "delivered"
    assert {e.outcome for e in kills[1:]} <= {"already_pending", "ignored"}


# The init of a new pid namespace: forks a child with a unique comm, waits until it runs, exits.
PIDNS_INIT = r"""
import ctypes, os, signal, sys
r, w = os.pipe()
if os.fork() == 0:
    ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
    os.write(w, b"x")
    signal.pause()
    os._exit(1)
os.read(r, 1)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_pid_namespace_init_exits() -> None:
    """Like `unshare -pf sh -c 'sleep 60 & sleep 0.2'`: the namespace's init exits and the
    kernel kills the process it leaves behind."""
    comm = f"sgs-ns-{uuid.uuid4().hex[:6]}"
    collector = tracing_kills()
    try:
        proc = subprocess.run(["unshare", "-pf", sys.executable, "-c", PIDNS_INIT, comm],
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        (event,) = collector.wait_count(
            lambda e: e.via == "kernel" and e.sig == SIGKILL and e.target_comm == comm,
            timeout=TIMEOUT)
    finally:
        collector.finish()
    assert event.origin == "pid_namespace"


MEMORY_HOG = r"""
import os, sys
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
chunks = []
while True:
    chunks.append(bytearray(1 << 20))  # written: charged to the cgroup
"""


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in a v1 controller's hierarchy ("" for v2's "0::")."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names == controller:
            return path.strip("/")
    return ""


def memory_cgroup(limit: int = 32 << 20) -> Path | None:
    """A new memory cgroup with a small limit, under this process's own (cgroup v2 at
    /sys/fs/cgroup with the memory controller, else the v1 memory controller); None where
    the machine has neither."""
    name = f"sigscope-oom-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        for base in (v2 / _own_cgroup(""), v2):
            control = base / "cgroup.subtree_control"
            if control.exists() and "memory" in control.read_text().split():
                group = base / name
                group.mkdir()
                (group / "memory.max").write_text(str(limit))
                if (group / "memory.swap.max").exists():
                    (group / "memory.swap.max").write_text("0")
                return group
        return None
    v1 = Path("/sys/fs/cgroup/memory")
    if not (v1 / "memory.limit_in_bytes").exists():
        return None
    for base in (v1 / _own_cgroup("memory"), v1):
        group = base / name
        try:
            group.mkdir()
        except OSError:
            continue
        (group / "memory.limit_in_bytes").write_text(str(limit))
        return group
    return None


def test_memory_cgroup_oom_kill() -> None:
    group = memory_cgroup()
    if group is None:
        pytest.skip("needs a memory cgroup: cgroup v2 with the memory controller, or v1 memory")
    try:
        collector = tracing_kills()
        try:
            proc = subprocess.Popen([sys.executable, "-c", MEMORY_HOG,
                                     str(group / "cgroup.procs")])
            assert proc.wait(TIMEOUT) == -SIGKILL
            event = kernel_kill_of(collector, proc.pid)
        finally:
            collector.finish()
    finally:
        group.rmdir()
    assert (event.code, event.origin) == (SI_KERNEL, "oom")


def cgroup2_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.max.depth").exists():
            return root
    return None


def test_cgroup_kill() -> None:
    """A write of 1 to a cgroup v2 cgroup.kill (5.14+)."""
    require_feature("cgroup_kill")
    root = cgroup2_root()
    if root is None:
        pytest.skip("needs a cgroup v2 hierarchy")
    group = root / f"sigscope-kill-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        assert (group / "cgroup.kill").exists()
        child = subprocess.Popen(["sleep", "60"])
        (group / "cgroup.procs").write_text(str(child.pid))
        collector = tracing_kills()
        try:
            (group / "cgroup.kill").write_text("1")
            assert child.wait(TIMEOUT) == -SIGKILL
            event = kernel_kill_of(collector, child.pid)
        finally:
            collector.finish()
    finally:
        group.rmdir()
    assert (event.code, event.origin) == (SI_USER, "cgroup_kill")


def test_parent_death_signal() -> None:
    """A grandchild with prctl(PR_SET_PDEATHSIG, SIGKILL) is killed when its parent exits."""
    ready_r, ready_w = os.pipe()
    armed_r, armed_w = os.pipe()
    grandchild = event = None
    collector = tracing_kills()
    try:
        middle = os.fork()
        if middle == 0:
            try:
                if os.fork() == 0:
                    libc.prctl(1, SIGKILL)  # PR_SET_PDEATHSIG, armed while the parent lives
                    os.write(ready_w, b"%d\n" % os.getpid())
                    os.write(armed_w, b"x")
                    signal.pause()
                else:
                    os.read(armed_r, 1)  # exit only once the grandchild has armed it
            finally:
                os._exit(0)
        grandchild = int(os.read(ready_r, 64).split()[0])
        os.waitpid(middle, 0)
        event = kernel_kill_of(collector, grandchild)
    finally:
        collector.finish()
        for fd in (ready_r, ready_w, armed_r, armed_w):
            os.close(fd)
        if grandchild is not None and event is None:
            try:
                os.kill(grandchild, SIGKILL)  # the test failed: do not leave it behind
            except ProcessLookupError:
                pass
    assert event is not None and event.origin == "parent_death"


PTRACE_TRACEME, PTRACE_KILL = 0, 8


def test_ptrace_kill() -> None:
    child = os.fork()
    if child == 0:
        try:
            libc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    collector = tracing_kills()
    try:
        assert libc.ptrace(PTRACE_KILL, child, None, None) == 0
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGKILL
        event = kernel_kill_of(collector, child)
    finally:
        collector.finish()
    assert event.origin == "ptrace"
