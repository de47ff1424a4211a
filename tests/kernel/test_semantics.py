"""Signal semantics on the real kernel, with real processes: real-time signal names as this
system's C library counts them (checked against Python's `signal` module and bash's `kill -l`),
exclusion filters that only exclude, and the arguments of tkill(2)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import pytest
from helpers import SRC, Target, started

from sigscope import top
from sigscope.model.signals import parse_signal, rt_range, signal_name
from sigscope.send import send_signal
from sigscope.tracer import trace

# Every test on both ways of learning a call (conftest.py entry_path).
pytestmark = pytest.mark.usefixtures("entry_path")

SIGCHLD = 17
BAD_SIGNAL = 65
TIMEOUT = 10.0

# Handles SIGRTMIN+1 (as Python counts it: the C library's), says which signal it got.
RT_HANDLER = r"""
import os, signal, sys
got = []
signal.signal(signal.SIGRTMIN + 1, lambda sig, frame: got.append(sig))
print("ready", flush=True)
while not got:
    signal.pause()
print("got", got[0], flush=True)
"""


def _read_line(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child said nothing"
    return proc.stdout.readline().strip()


def test_rt_range_is_the_c_librarys() -> None:
    assert rt_range() == (signal.SIGRTMIN, signal.SIGRTMAX)


def test_names_agree_with_bash_kill_l() -> None:
    listing = subprocess.run(["bash", "-c", "kill -l"], capture_output=True, text=True,
                             check=True).stdout
    words = listing.replace(")", " ").split()  # " 1) SIGHUP\t 2) SIGINT ..."
    bash = {int(number): name for number, name in zip(words[::2], words[1::2], strict=True)}
    low, high = rt_range()
    for number in range(1, 65):
        if number in bash:
            assert signal_name(number) == bash[number], number
            assert parse_signal(bash[number]) == number
            assert parse_signal(bash[number].removeprefix("SIG")) == number
        else:
            assert 32 <= number < low, number  # kept by the C library: bash has no name
            assert signal_name(number) == f"SIG{number}"
    assert signal_name(signal.SIGRTMIN) == "SIGRTMIN"
    assert signal_name(signal.SIGRTMIN + 1) == "SIGRTMIN+1"
    assert signal_name(signal.SIGRTMAX) == "SIGRTMAX"


def test_send_rtmin_plus_1_reaches_a_python_handler_of_sigrtmin_plus_1() -> None:
    """The README's example: `sigscope send --via rt_sigqueueinfo --value 7 RTMIN+1 PID`
    must send what the receiver calls SIGRTMIN+1 (it would die of any other RT signal)."""
    child = subprocess.Popen([sys.executable, "-c", RT_HANDLER], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert _read_line(child) == "ready"
        tracer = started(trace(target_ids=[child.pid],
                               signals="RTMIN+1", buffer_size=1 << 20))
        try:
            env = {**os.environ, "PYTHONPATH": SRC}
            sent = subprocess.run(
                [sys.executable, "-m", "sigscope", "send", "--via", "rt_sigqueueinfo",
                 "--value", "7", "RTMIN+1", str(child.pid)],
                capture_output=True, text=True, env=env, timeout=TIMEOUT)
            assert sent.returncode == 0, sent.stderr
            assert _read_line(child) == f"got {signal.SIGRTMIN + 1}"
            assert child.wait(TIMEOUT) == 0
            (event,) = tracer.wait_count(lambda e: e.target_pid == child.pid)
        finally:
            tracer.finish()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(TIMEOUT)
    assert (event.sig, event.signal, event.via) == (
        signal.SIGRTMIN + 1, "SIGRTMIN+1", "rt_sigqueueinfo")


def test_bash_kill_s_rtmin_plus_1_is_matched_and_named_as_bash_names_it() -> None:
    with Target() as target:
        # The send is what is checked; the target (no handler for it) may die of it.
        collector = started(trace(signals="RTMIN+1", target_ids=[target.pid],
                                  buffer_size=1 << 20))
        try:
            subprocess.run(["bash", "-c", f"kill -s RTMIN+1 {target.pid}"], check=True,
                           timeout=TIMEOUT)
            (event,) = collector.wait_count(lambda e: e.via == "kill")
        finally:
            collector.finish()
    assert (event.sig, event.signal) == (signal.SIGRTMIN + 1, "SIGRTMIN+1")
    assert event.to_dict()["signal"] == "SIGRTMIN+1"


MISSING_PID = 0x7FFFFFF0  # above any pid_max: ESRCH


@pytest.mark.parametrize("failed_only", [False, True])
def test_excluding_a_signal_keeps_sends_of_invalid_numbers(failed_only: bool) -> None:
    """`python3 -c 'import os; os.kill(os.getpid(), 65)'` under `trace [-x] -e CHLD`."""
    with Target() as target:
        collector = started(trace(pids=[target.pid], exclude_signals="CHLD",
                                  failed_only=failed_only, buffer_size=1 << 20))
        try:
            assert target.command(f"kill {target.pid} {BAD_SIGNAL}") == "err EINVAL"
            assert target.command(f"kill {target.pid} {SIGCHLD}") == "ok"
            assert target.command(f"kill {MISSING_PID} {SIGCHLD}") == "err ESRCH"
            assert target.command(f"kill {target.pid} 10") == "ok"
            assert target.command(f"kill {MISSING_PID} 10") == "err ESRCH"
            collector.wait_count(lambda e: e.sig == 10 and e.error == "ESRCH")
        finally:
            events = collector.finish()
    expected = [(BAD_SIGNAL, "SIG#65", "EINVAL"), (10, "SIGUSR1", None),
                (10, "SIGUSR1", "ESRCH")]
    if failed_only:
        del expected[1]
    assert [(e.sig, e.signal, e.error) for e in events] == expected


def test_top_excluding_a_signal_counts_sends_of_invalid_numbers() -> None:
    with Target() as target:
        counter = top.count(pids=[target.pid], exclude_signals="CHLD")
        counter.start()
        try:
            assert target.command(f"kill {target.pid} {BAD_SIGNAL}") == "err EINVAL"
            assert target.command(f"kill {target.pid} {SIGCHLD}") == "ok"
            assert target.command(f"kill {target.pid} 10") == "ok"
        finally:
            final = counter.close()
    counted = {(key.sig, key.error): n for key, n in final.rows.items()}
    assert counted == {(BAD_SIGNAL, "EINVAL"): 1, (10, None): 1}


@pytest.mark.parametrize("via", ["tkill", "tgkill"])
def test_thread_directed_arguments(via: str) -> None:
    with Target(threads=1) as target:
        thread = target.tids[0]
        collector = started(trace(vias=[via], target_ids=[thread], buffer_size=1 << 20))
        try:
            send_signal(via, 10, pid=None if via == "tkill" else target.pid, tid=thread)
            (event,) = collector.wait_count(lambda e: e.via == via)
        finally:
            collector.finish()
    expected = {"pid": None, "tid": thread, "pidfd": None} if via == "tkill" else {
        "pid": target.pid, "tid": thread, "pidfd": None}
    assert event.to_dict()["args"] == expected
