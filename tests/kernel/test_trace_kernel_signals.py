"""Kernel-generated signals (via == "kernel"): a child exiting, a real fault, a broken pipe, an
interval timer and a POSIX timer, each produced by a child process we control."""

from __future__ import annotations

import os

import pytest
from helpers import TARGET_COMM, Target, started

from sigscope.model.event import Event
from sigscope.tracer import trace

SIGSEGV, SIGPIPE, SIGALRM, SIGCHLD = 11, 13, 14, 17
ME = os.getpid()


def assert_kernel_made(e: Event) -> None:
    """What every kernel-generated record has: no syscall, so no arguments and no result."""
    assert e.via == "kernel"
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd, e.result, e.error) == (None,) * 5
    d = e.to_dict()
    assert d["args"] == {"pid": None, "tid": None, "pidfd": None}
    assert d["origin"] == e.origin


@pytest.mark.parametrize("buffer", ["ringbuf", "perf"])
def test_sigchld_when_a_child_exits(buffer: str) -> None:
    with Target() as child:
        collector = started(trace(pids=[child.pid], buffer=buffer, buffer_size=1 << 20))
        try:
            child.command("exit 3", answer=False)
            assert child.wait() == 3
            (e,) = collector.wait_count(lambda e: e.sig == SIGCHLD)
        finally:
            collector.finish()
    assert_kernel_made(e)
    assert (e.signal, e.origin, e.code_name) == ("SIGCHLD", "child", "CLD_EXITED")
    assert (e.sender_pid, e.sender_tid, e.sender_comm) == (child.pid, child.pid, TARGET_COMM)
    assert (e.target_pid, e.target_tid) == (ME, ME)
    assert e.outcome in ("delivered", "ignored")  # SIG_DFL for SIGCHLD is "ignore"


def test_sigsegv_from_a_real_fault() -> None:
    with Target() as child:
        collector = started(trace(target_ids=[child.pid], buffer_size=1 << 20))
        try:
            child.command("segv", answer=False)
            assert child.wait() == -SIGSEGV
            (e,) = collector.wait_count(lambda e: e.sig == SIGSEGV)
        finally:
            events = collector.finish()
    assert_kernel_made(e)
    assert (e.signal, e.origin, e.code_name, e.outcome) == ("SIGSEGV", "fault", "SEGV_MAPERR",
                                                           "delivered")
    assert (e.sender_pid, e.target_pid, e.target_tid, e.target_comm) == (
        child.pid, child.pid, child.pid, TARGET_COMM)
    assert sum(x.sig == SIGSEGV for x in events) == 1  # never the same signal twice


def test_sigpipe_from_a_write_to_a_closed_pipe() -> None:
    with Target() as child:
        collector = started(trace(pids=[child.pid], buffer_size=1 << 20))
        try:
            assert child.command("pipe") == "ok"
            (e,) = collector.wait_count(lambda e: e.sig == SIGPIPE)
        finally:
            collector.finish()
    assert_kernel_made(e)
    assert (e.signal, e.origin, e.code_name) == ("SIGPIPE", "pipe", "SI_USER")
    assert (e.sender_pid, e.target_pid, e.target_tid) == (child.pid, child.pid, child.pid)
    assert e.outcome == "ignored"  # Python ignores SIGPIPE and reports EPIPE instead


@pytest.mark.parametrize(("command", "code_name"), [("itimer", "SI_KERNEL"),
                                                    ("posix_timer", "SI_TIMER")])
def test_sigalrm_from_a_timer(command: str, code_name: str) -> None:
    with Target() as child:
        # The timer fires in interrupt context: whoever runs then is the "sender"; the
        # recipient is what identifies the child.
        collector = started(trace(target_ids=[child.pid], buffer_size=1 << 20))
        try:
            answer = child.command(command).split()
            assert answer[:2] == ["ok", str(SIGALRM)], answer
            (e,) = collector.wait_count(lambda e: e.sig == SIGALRM)
        finally:
            collector.finish()
    assert int(answer[2]) == e.code  # what the child's siginfo said
    assert_kernel_made(e)
    assert (e.signal, e.origin, e.code_name, e.outcome) == ("SIGALRM", "timer", code_name,
                                                           "delivered")
    assert (e.target_pid, e.target_tid, e.target_comm) == (child.pid, child.pid, TARGET_COMM)
