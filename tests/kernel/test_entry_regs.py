"""Two probes per signal (programs/entry_regs.py): where the kernel allows it, no sys_enter probe
is attached and signal_generate and sys_exit read the call from the sender's saved user
registers. These tests check the choice and what only this path could get wrong: signals the
kernel generates from interrupts and other tasks while this process is inside a signal syscall,
and a pidfd for one thread. Each runs on both paths (conftest.py entry_path); the send paths,
failures, signal 0, fan-out and the filters are the other modules' tests, run on both too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import REGS_FEATURES
from helpers import SRC, Target, started

from sigscope.bpf import features
from sigscope.programs import entry_regs
from sigscope.programs import signal as probes
from sigscope.programs.common import RingbufOutput, Role
from sigscope.programs.task import task_layout
from sigscope.send import pidfd_open, send_signal
from sigscope.tracer import trace

pytestmark = pytest.mark.usefixtures("entry_path")

SIGUSR1 = 10
ME = os.getpid()


def _plans(entry_probes: bool) -> list:
    cfg = probes.ProbeConfig(trace().filters, RingbufOutput(-1, -2), probes.MapFds(-1, -2, -3),
                             claim=probes.inflight_claim(), task=task_layout(),
                             entry_probes=entry_probes)
    return list(probes.signal_probe_plans(cfg))


@pytest.mark.needs(*REGS_FEATURES)
def test_no_sys_enter_probe_where_the_kernel_allows_and_three_when_forced() -> None:
    two = _plans(entry_probes=False)
    assert {p.role for p in two} == {Role.GENERATE, Role.EXIT}
    assert all(event.startswith("sys_exit_") for p in two if p.role is Role.EXIT
               for _, event in p.tracepoints)
    three = _plans(entry_probes=True)
    assert sorted(event for p in three if p.role is Role.ENTRY for _, event in p.tracepoints) \
        == sorted(f"sys_enter_{call}" for call in probes.syscalls_to_trace(trace().filters))


def test_selftest_names_the_entry_path(entry_path: str) -> None:
    regs = entry_regs.allowed(task_layout(), probes.inflight_claim()) is not None
    assert regs == all(features.has(name) for name in REGS_FEATURES)
    for no_btf in ("0", "1"):
        run = subprocess.run([sys.executable, "-m", "sigscope", "selftest"], capture_output=True,
                             text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": SRC, "SIGSCOPE_NO_BTF": no_btf})
        assert run.returncode == 0, run.stdout + run.stderr
        line = [w for w in run.stdout.splitlines() if w.startswith("selftest: syscall entry: ")]
        assert len(line) == 1, run.stdout
        want = "saved user registers" if regs and no_btf == "0" else "sys_enter tracepoints"
        assert want in line[0]


def test_interrupt_and_other_task_signals_are_kernel_records_during_signal_syscalls() -> None:
    """SIGALRM from an interval timer (generated in timer interrupt context, often while this
    process is inside kill(2)) and SIGCHLD from exiting children (generated in the child's
    context) are the kernel's, never parts of the kill(2) calls this process is making; and
    every kill(2) is exactly one record."""
    alarms = []
    previous = signal.signal(signal.SIGALRM, lambda *_: alarms.append(1))
    sends = 0
    with Target() as target:
        tracer = trace(target_ids=[ME, target.pid], buffer_size=1 << 22)
        with tracer:
            collector = started(tracer)
            signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
            try:
                children = 0
                while len(alarms) < 20 or children < 3 or sends < 400:
                    for _ in range(50):
                        send_signal("kill", SIGUSR1, pid=target.pid)
                        send_signal("kill", 0, pid=target.pid)
                        sends += 1
                    if children < 3:
                        subprocess.run(["true"], check=True)
                        children += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0, 0)
                signal.signal(signal.SIGALRM, previous)
            collector.wait_count(lambda e: e.via == "kill" and e.target_pid == target.pid
                                 and e.sig == SIGUSR1, count=sends)
            events = collector.finish()
    assert tracer.lost == 0
    kills = [e for e in events if e.via == "kill"]
    assert sum(1 for e in kills if e.sig == SIGUSR1) == sends
    assert sum(1 for e in kills if e.sig == 0) == sends
    assert all(e.sender_pid == ME and e.target_pid == target.pid for e in kills)
    alrm = [e for e in events if e.sig == signal.SIGALRM and e.target_pid == ME]
    chld = [e for e in events if e.sig == signal.SIGCHLD and e.target_pid == ME]
    assert len(alrm) >= 1 and len(chld) >= 3
    assert {e.via for e in alrm + chld} == {"kernel"}
    assert all(e.sender_pid != ME for e in chld)


@pytest.mark.needs("pidfd_thread")
def test_pidfd_of_one_thread_signals_that_thread() -> None:
    with Target(threads=1) as target:
        thread = target.tids[0]
        with trace(target_ids=[target.pid], buffer_size=1 << 20) as tracer:
            collector = started(tracer)
            fd = pidfd_open(thread, features.PIDFD_THREAD)
            try:
                send_signal("pidfd_send_signal", SIGUSR1, pidfd=fd)
            finally:
                os.close(fd)
            (e,) = collector.wait_count(lambda e: e.via == "pidfd_send_signal")
    assert (e.sender_pid, e.target_pid, e.target_tid, e.group, e.result) == (
        ME, target.pid, thread, False, 0)
    assert e.arg_pidfd == fd
