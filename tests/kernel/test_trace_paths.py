"""`sigscope trace` on the real kernel: each signal syscall, fan-out, failures, threads.

Signals go to child processes we control (helpers.Target); each tracer keeps only what this test
process (or a child we name) sends, so other activity on the machine cannot interfere. Every test
waits for the events that must be there, then checks them field by field.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from helpers import TARGET_COMM, Collector, Target, free_uid, started

from sigscope.model.event import Event
from sigscope.model.signals import SI_QUEUE, SI_TKILL, SI_USER
from sigscope.send import SendError, pidfd_open, send_signal
from sigscope.tracer import trace

# Every test on both ways of learning a call (conftest.py entry_path).
pytestmark = pytest.mark.usefixtures("entry_path")

SIGUSR1, SIGUSR2, SIGRT8 = 10, 12, 40
ME = os.getpid()
BUFFERS = ["ringbuf", "perf"]


@pytest.fixture(scope="module", params=BUFFERS)
def mine(request: pytest.FixtureRequest, entry_path: str):
    """One tracer per buffer kind for the whole module: signals sent by this process."""
    collector = started(trace(pids=[ME], buffer=request.param, buffer_size=1 << 20))
    yield collector
    events = collector.finish()
    # Never the same signal twice: everything this process sent to a target came back as a
    # syscall record, so no kernel-generated record may name one of our targets.
    assert [e for e in events if e.via != "kernel" and e.target_comm == TARGET_COMM]
    assert not [e for e in events if e.via == "kernel" and e.target_comm == TARGET_COMM]
    assert collector.tracer.lost == 0


@pytest.fixture
def target():
    with Target() as child:
        yield child


def sent_to(pid: int, via: str | None = None) -> callable:
    return lambda e: e.target_pid == pid and (via is None or e.via == via)


def after_marker(collector: Collector, match, marker_pid: int) -> list[Event]:
    """Events matching `match`, once a later sig-0 probe to `marker_pid` has been seen: whatever
    the kernel wrote for the earlier send is in by then (with perf buffers too, as the probe is
    sent after it and the reader drains every CPU's ring on each read)."""
    send_signal("kill", 0, pid=marker_pid)
    collector.wait_count(lambda e: e.sig == 0 and e.arg_pid == marker_pid and e.via == "kill")
    return [e for e in collector.events if match(e)]


def assert_sender_is_me(e: Event) -> None:
    assert (e.sender_pid, e.sender_tid, e.sender_uid) == (ME, threading.get_native_id(), 0)
    assert e.sender_comm  # python3, pytest...: whatever this process is called


def assert_delivered_to(e: Event, target: Target, tid: int | None = None) -> None:
    assert (e.target_pid, e.target_tid, e.target_comm) == (target.pid, tid or target.pid,
                                                           TARGET_COMM)
    assert (e.result, e.error, e.outcome, e.origin) == (0, None, "delivered", None)


# --- one test per syscall path ---------------------------------------------------------------

def test_kill(mine: Collector, target: Target) -> None:
    send_signal("kill", SIGUSR1, pid=target.pid)
    (e,) = mine.wait_count(sent_to(target.pid, "kill"))
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.sig, e.signal, e.code, e.code_name) == (SIGUSR1, "SIGUSR1", SI_USER, "SI_USER")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (target.pid, None, None)
    assert e.to_dict()["args"] == {"pid": target.pid, "tid": None, "pidfd": None}


def test_tkill(mine: Collector, target: Target) -> None:
    send_signal("tkill", SIGUSR2, tid=target.pid)
    (e,) = mine.wait_count(sent_to(target.pid, "tkill"))
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.sig, e.signal, e.code_name) == (SIGUSR2, "SIGUSR2", "SI_TKILL")
    # tkill(tid, sig): its argument is a thread id (man 2 tkill).
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (None, target.pid, None)
    assert e.to_dict()["args"] == {"pid": None, "tid": target.pid, "pidfd": None}


def test_tgkill(mine: Collector, target: Target) -> None:
    send_signal("tgkill", SIGUSR1, pid=target.pid, tid=target.pid)
    (e,) = mine.wait_count(sent_to(target.pid, "tgkill"))
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.code, e.code_name) == (SI_TKILL, "SI_TKILL")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (target.pid, target.pid, None)


def test_rt_sigqueueinfo(mine: Collector, target: Target) -> None:
    send_signal("rt_sigqueueinfo", SIGRT8, pid=target.pid, value=7)
    (e,) = mine.wait_count(sent_to(target.pid, "rt_sigqueueinfo"))
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.sig, e.signal, e.code, e.code_name) == (
        SIGRT8, f"SIGRTMIN+{SIGRT8 - signal.SIGRTMIN}", SI_QUEUE, "SI_QUEUE")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (target.pid, None, None)


def test_rt_tgsigqueueinfo(mine: Collector, target: Target) -> None:
    send_signal("rt_tgsigqueueinfo", SIGRT8, pid=target.pid, tid=target.pid, value=9)
    (e,) = mine.wait_count(sent_to(target.pid, "rt_tgsigqueueinfo"))
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.code, e.code_name) == (SI_QUEUE, "SI_QUEUE")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (target.pid, target.pid, None)


def test_pidfd_send_signal(mine: Collector, target: Target) -> None:
    pidfd = pidfd_open(target.pid)
    try:
        send_signal("pidfd_send_signal", SIGUSR1, pidfd=pidfd)
        (e,) = mine.wait_count(sent_to(target.pid, "pidfd_send_signal"))
    finally:
        os.close(pidfd)
    assert_sender_is_me(e)
    assert_delivered_to(e, target)
    assert (e.code, e.code_name) == (SI_USER, "SI_USER")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (None, None, pidfd)


def test_failed_pidfd_send_reports_the_pid_behind_the_pidfd(
    mine: Collector, target: Target
) -> None:
    pidfd = pidfd_open(target.pid)
    try:
        with pytest.raises(SendError):
            send_signal("pidfd_send_signal", 99, pidfd=pidfd)
        (e,) = mine.wait_count(lambda e: e.via == "pidfd_send_signal" and e.arg_pidfd == pidfd
                               and e.sig == 99)
    finally:
        os.close(pidfd)
    assert (e.target_pid, e.target_comm, e.error, e.outcome) == (
        target.pid, TARGET_COMM, "EINVAL", None)


# --- fan-out ---------------------------------------------------------------------------------

def test_kill_process_group_is_one_record_per_recipient(mine: Collector) -> None:
    with Target(pgid=0) as leader, Target(pgid=leader.pid) as second, \
            Target(pgid=leader.pid) as third:
        members = {leader.pid, second.pid, third.pid}
        assert {os.getpgid(p) for p in members} == {leader.pid}
        send_signal("kill", SIGUSR1, pid=-leader.pid)
        mine.wait_count(lambda e: e.arg_pid == -leader.pid, count=3)
        events = after_marker(mine, lambda e: e.arg_pid == -leader.pid, marker_pid=leader.pid)
    assert len(events) == 3
    assert {e.target_pid for e in events} == members
    assert {e.target_tid for e in events} == members
    for e in events:
        assert (e.via, e.sig, e.result, e.error, e.code_name) == ("kill", SIGUSR1, 0, None,
                                                                  "SI_USER")
        assert e.outcome == "delivered" and e.target_comm == TARGET_COMM
        assert_sender_is_me(e)
    assert len({e.id for e in events}) == 3


def test_kill_minus_one_by_an_unprivileged_user() -> None:
    uid = free_uid()
    with Target() as first, Target() as second, Target() as sender:
        for child in (first, second):
            assert child.command(f"setuid {uid}") == "ok"
        collector = started(trace(pids=[sender.pid], buffer_size=1 << 20))
        try:
            # Only after setuid: kill(-1) as root would signal the whole machine.
            assert sender.command(f"setuid {uid}") == "ok"
            assert sender.command(f"kill -1 {SIGUSR1}") == "ok"
            assert sender.command(f"kill {sender.pid} 0") == "ok"  # marker
            collector.wait_count(lambda e: e.sig == 0)
        finally:
            events = collector.finish()
    fanned = [e for e in events if e.arg_pid == -1]
    assert {e.target_pid for e in fanned} == {first.pid, second.pid}
    assert len(fanned) == 2
    for e in fanned:
        assert (e.via, e.sig, e.result, e.outcome) == ("kill", SIGUSR1, 0, "delivered")
        assert (e.sender_pid, e.sender_uid, e.sender_comm) == (sender.pid, uid, TARGET_COMM)


# --- failures and probes ---------------------------------------------------------------------

def test_esrch(mine: Collector) -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        missing = int(f.read()) + 1  # no process can have it
    with pytest.raises(SendError):
        send_signal("kill", SIGUSR1, pid=missing)
    (e,) = mine.wait_count(lambda e: e.arg_pid == missing)
    assert (e.result, e.error, e.outcome, e.code, e.code_name) == (-3, "ESRCH", None, None, None)
    assert (e.target_pid, e.target_tid, e.target_comm) == (missing, None, None)
    assert e.to_dict()["error"] == "ESRCH"


def test_eperm_from_an_unprivileged_sender() -> None:
    uid = free_uid()
    with Target() as victim, Target() as sender:
        collector = started(trace(pids=[sender.pid], buffer_size=1 << 20))
        try:
            assert sender.command(f"setuid {uid}") == "ok"
            assert sender.command(f"kill {victim.pid} {SIGUSR1}") == "err EPERM"
            (e,) = collector.wait_count(lambda e: e.arg_pid == victim.pid)
        finally:
            collector.finish()
    assert (e.via, e.sig, e.result, e.error, e.outcome) == ("kill", SIGUSR1, -1, "EPERM", None)
    assert (e.target_pid, e.target_comm) == (victim.pid, TARGET_COMM)
    assert (e.sender_pid, e.sender_uid) == (sender.pid, uid)


def test_einval_for_a_signal_number_out_of_range(mine: Collector, target: Target) -> None:
    with pytest.raises(SendError):
        send_signal("tgkill", 99, pid=target.pid, tid=target.pid)
    (e,) = mine.wait_count(lambda e: e.sig == 99 and e.via == "tgkill"
                           and e.arg_pid == target.pid)
    assert (e.signal, e.result, e.error, e.outcome) == ("SIG#99", -22, "EINVAL", None)
    assert (e.target_pid, e.target_tid, e.target_comm) == (target.pid, target.pid, TARGET_COMM)


def test_signal_zero_probe_is_one_record_without_outcome(mine: Collector,
                                                         target: Target) -> None:
    send_signal("kill", 0, pid=target.pid)
    send_signal("kill", SIGUSR1, pid=target.pid)  # a later record: the probe's is in by then
    mine.wait_count(sent_to(target.pid, "kill"), count=2)
    probes = [e for e in mine.events if e.target_pid == target.pid and e.sig == 0]
    assert len(probes) == 1
    (e,) = probes
    assert (e.signal, e.result, e.error, e.outcome, e.code) == ("0", 0, None, None, None)
    assert (e.target_pid, e.target_comm) == (target.pid, TARGET_COMM)


# --- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["tgkill", "rt_tgsigqueueinfo", "tkill"])
def test_thread_directed_signal_to_a_non_main_thread(mine: Collector, via: str) -> None:
    with Target(threads=2) as target:
        thread = target.tids[1]
        assert thread != target.pid
        send_signal(via, SIGUSR1, pid=None if via == "tkill" else target.pid, tid=thread)
        (e,) = mine.wait_count(lambda e: e.target_tid == thread and e.via == via)
    assert_delivered_to(e, target, tid=thread)
    assert e.group is False
    if via == "tkill":
        assert (e.arg_pid, e.arg_tid) == (None, thread)  # tkill(tid, sig)
    else:
        assert (e.arg_pid, e.arg_tid) == (target.pid, thread)
