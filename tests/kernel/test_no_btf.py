"""Without kernel BTF (SIGSCOPE_NO_BTF=1 makes sigscope act as if /sys/kernel/btf/vmlinux were
missing, on any kernel): selftest, trace, trace --fate and top still work; the sender is read
through helper calls, and --fate reports what it cannot know (an exit code) as unknown."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fate_children import Child
from top_workload import TopProcess, Workload, expected_total, unique_comm

from sigscope.bpf import features

SRC = str(Path(__file__).resolve().parents[2] / "src")
TIMEOUT = 120.0  # a bound, not a wait (qemu guests of the kernel matrix are slow)


@pytest.fixture
def no_btf(monkeypatch):
    """SIGSCOPE_NO_BTF=1 for the subprocesses this test starts."""
    monkeypatch.setenv("SIGSCOPE_NO_BTF", "1")
    monkeypatch.setenv("PYTHONPATH", SRC)


def test_selftest_without_btf(no_btf) -> None:
    run = subprocess.run([sys.executable, "-m", "sigscope", "selftest"], capture_output=True,
                         text=True, timeout=TIMEOUT)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(r"btf_vmlinux\s+-\s+no", out)
    assert re.search(r"get_current_task_btf\s+5\.11\s+no", out)
    assert "sender fields: helper calls" in out
    assert "signal_generate: tracefs tracepoint, recipient's process from /proc" in out
    expected = ("group_dead field" if features.has("sched_exit_group_dead")
                else "unknown (no BTF)")
    assert f"fate exit: {expected}\n" in out
    assert "selftest: ok\n" in out


def test_trace_fate_without_btf_reports_a_death_as_unknown(no_btf) -> None:
    child = Child("""
say("ready")
sys.stdin.readline()
""")
    cli = subprocess.Popen(
        [sys.executable, "-m", "sigscope", "trace", "--fate", "-j", "-T", str(child.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with child:
            child.line()
            ready, _, _ = select.select([cli.stderr], [], [], TIMEOUT)
            assert ready and cli.stderr.readline().startswith("Tracing")  # type: ignore
            assert "no kernel BTF" in cli.stderr.readline()  # type: ignore[union-attr]
            os.kill(child.pid, signal.SIGTERM)
            assert child.wait() == -signal.SIGTERM
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=TIMEOUT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    [sent] = [r for r in records if r["type"] == "signal" and r["signal"] == "SIGTERM"]
    assert sent["sender"]["pid"] == os.getpid()  # the helper path read the sender
    [fate] = [r for r in records if r["type"] == "fate"]
    assert fate["id"] == sent["id"]
    # Delivered with the default action (terminate), but whether and how the process died
    # needs the exit code, which only BTF gives: unknown, never a guess.
    assert fate["effect"] == "unknown"
    if features.has("sched_exit_group_dead"):
        # The last thread's exit says the group died: the signal ended with it, in the child.
        assert fate["thread"]["pid"] == child.pid
    else:
        # Nothing says the group died: the signal is still queued when tracing ends, its
        # process perhaps dead (a thread of it exited): unknown, and taken by no thread.
        assert fate["thread"]["pid"] is None


def test_top_without_btf_counts_every_signal(no_btf) -> None:
    comm = unique_comm()
    running = TopProcess("-c", comm, "-j", "-i", "600")
    work = Workload(comm)
    work.run()
    work.finish()
    running.proc.send_signal(signal.SIGINT)
    code, intervals, err = running.finish(timeout=TIMEOUT)
    assert code == 0, err
    assert sum(i["total"] for i in intervals) == expected_total() + 1  # + its exit SIGCHLD
