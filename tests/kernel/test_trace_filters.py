"""Every `sigscope trace` filter, applied in the kernel: what is filtered out never reaches user
space. The decoder counts every record it decodes (Tracer.records), so after the tracer is
closed (which drains everything the kernel wrote) records == the events we kept."""

from __future__ import annotations

import os

import pytest
from helpers import Target, started

from sigscope.send import SendError, send_signal
from sigscope.tracer import trace

# Every test on both ways of learning a call (conftest.py entry_path).
pytestmark = pytest.mark.usefixtures("entry_path")

SIGUSR1, SIGUSR2 = 10, 12
ME = os.getpid()


def finish(collector) -> list:
    events = collector.finish()
    assert collector.tracer.records == len(events)  # nothing else was even decoded
    return events


def test_sender_pid() -> None:
    with Target() as kept, Target() as dropped, Target() as victim:
        collector = started(trace(pids=[kept.pid], buffer_size=1 << 20))
        try:
            assert dropped.command(f"kill {victim.pid} {SIGUSR1}") == "ok"
            send_signal("kill", SIGUSR1, pid=victim.pid)
            assert kept.command(f"kill {victim.pid} {SIGUSR2}") == "ok"
            collector.wait_count(lambda e: e.sender_pid == kept.pid)
        finally:
            events = finish(collector)
    assert events and {e.sender_pid for e in events} == {kept.pid}
    assert [(e.sig, e.target_pid) for e in events] == [(SIGUSR2, victim.pid)]


def test_target_process_or_thread() -> None:
    with Target(threads=1) as kept, Target() as dropped:
        thread = kept.tids[0]
        collector = started(trace(target_ids=[kept.pid, thread], buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=dropped.pid)
            send_signal("tgkill", SIGUSR1, pid=dropped.pid, tid=dropped.pid)
            send_signal("kill", SIGUSR1, pid=kept.pid)
            send_signal("tkill", SIGUSR2, tid=thread)
            try:
                send_signal("kill", 99, pid=kept.pid)  # failed: matched through its argument
            except SendError:
                pass
            collector.wait_count(lambda e: e.sig == 99)
        finally:
            events = finish(collector)
    assert {e.target_pid for e in events} == {kept.pid}
    sends = [(e.via, e.sig, e.target_tid) for e in events if e.via != "kernel"]
    assert sends == [("kill", SIGUSR1, kept.pid), ("tkill", SIGUSR2, thread), ("kill", 99, None)]


def test_target_process_matches_signals_to_its_threads() -> None:
    with Target(threads=1) as kept:
        thread = kept.tids[0]
        collector = started(trace(target_ids=[kept.pid], buffer_size=1 << 20))
        try:
            send_signal("tgkill", SIGUSR1, pid=kept.pid, tid=thread)
            (e,) = collector.wait_count(lambda e: e.via == "tgkill")
        finally:
            finish(collector)
    assert (e.target_pid, e.target_tid, e.result) == (kept.pid, thread, 0)


def test_target_process_matches_a_fault_in_one_of_its_threads() -> None:
    with Target() as child:
        collector = started(trace(target_ids=[child.pid], buffer_size=1 << 20))
        try:
            child.command("segv_thread", answer=False)
            assert child.wait() == -11
            (e,) = collector.wait_count(lambda e: e.sig == 11)
        finally:
            finish(collector)
    assert (e.via, e.origin, e.target_pid, e.sender_pid) == ("kernel", "fault", child.pid,
                                                             child.pid)
    assert e.target_tid == e.sender_tid != child.pid


def test_signal() -> None:
    with Target() as victim:
        collector = started(trace(pids=[ME], signals="USR2", buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=victim.pid)
            send_signal("kill", 0, pid=victim.pid)
            send_signal("kill", SIGUSR2, pid=victim.pid)
            collector.wait_count(lambda e: e.sig == SIGUSR2)
        finally:
            events = finish(collector)
    assert [(e.sig, e.target_pid) for e in events] == [(SIGUSR2, victim.pid)]


def test_exclude_signal() -> None:
    with Target() as victim:
        collector = started(trace(pids=[ME], exclude_signals="SIGUSR1,0", buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=victim.pid)
            send_signal("tgkill", 0, pid=victim.pid, tid=victim.pid)
            send_signal("tgkill", SIGUSR2, pid=victim.pid, tid=victim.pid)
            collector.wait_count(lambda e: e.sig == SIGUSR2)
        finally:
            events = finish(collector)
    assert [(e.sig, e.via) for e in events] == [(SIGUSR2, "tgkill")]


def test_sender_comm() -> None:
    with Target() as sender, Target() as victim:
        # -T too: other processes on the machine may share a comm; only ours may signal victim.
        collector = started(trace(comm="sigscope-tgt", target_ids=[victim.pid],
                                  buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=victim.pid)  # from python: filtered out
            assert sender.command(f"kill {victim.pid} {SIGUSR2}") == "ok"
            collector.wait_count(lambda e: e.sender_pid == sender.pid)
        finally:
            events = finish(collector)
    assert [(e.sender_pid, e.sender_comm, e.sig) for e in events] == [
        (sender.pid, "sigscope-tgt", SIGUSR2)]


def test_via() -> None:
    with Target() as victim:
        collector = started(trace(pids=[ME], vias=["tgkill", "rt_sigqueueinfo"],
                                  buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=victim.pid)
            send_signal("tkill", SIGUSR1, tid=victim.pid)
            send_signal("pidfd_send_signal", SIGUSR1, pid=victim.pid)
            send_signal("rt_tgsigqueueinfo", 40, pid=victim.pid, tid=victim.pid)
            send_signal("rt_sigqueueinfo", 40, pid=victim.pid)
            send_signal("tgkill", SIGUSR2, pid=victim.pid, tid=victim.pid)
            collector.wait_count(lambda e: e.via == "tgkill")
        finally:
            events = finish(collector)
    assert [e.via for e in events] == ["rt_sigqueueinfo", "tgkill"]


def test_via_kernel_only() -> None:
    with Target() as child:
        collector = started(trace(target_ids=[child.pid], vias=["kernel"], buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=child.pid)  # a syscall: never a "kernel" record
            assert child.command("pipe") == "ok"
            collector.wait_count(lambda e: e.sig == 13)
        finally:
            events = finish(collector)
    assert [(e.via, e.sig) for e in events] == [("kernel", 13)]


def test_failed_only() -> None:
    with Target() as victim:
        with open("/proc/sys/kernel/pid_max") as f:
            missing = int(f.read()) + 1
        collector = started(trace(pids=[ME], failed_only=True, buffer_size=1 << 20))
        try:
            send_signal("kill", SIGUSR1, pid=victim.pid)
            send_signal("kill", 0, pid=victim.pid)
            for via, sig, pid in (("kill", 99, victim.pid), ("kill", 0, missing)):
                try:
                    send_signal(via, sig, pid=pid)
                except SendError:
                    pass
            collector.wait_count(lambda e: e.arg_pid == missing)
        finally:
            events = finish(collector)
    assert [(e.sig, e.error) for e in events] == [(99, "EINVAL"), (0, "ESRCH")]


def test_kill_only() -> None:
    with Target() as child:
        collector = started(trace(target_ids=[child.pid], kill_only=True, buffer_size=1 << 20))
        try:
            assert child.command("pipe") == "ok"  # kernel-generated: filtered out
            send_signal("kill", SIGUSR1, pid=child.pid)
            collector.wait_count(lambda e: e.via == "kill")
        finally:
            events = finish(collector)
    assert [(e.via, e.sig) for e in events] == [("kill", SIGUSR1)]
