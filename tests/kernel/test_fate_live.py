"""`--fate` with real processes: deliveries, handlers, deaths, core dumps, stops, pending and
consumed signals, a group signal taken by a non-main thread, coalescing.

The children, and how a test synchronises with them, are in fate_children.py.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fate_children import TIMEOUT, Child, traced

from sigscope.fate import Fate


@pytest.mark.parametrize("buffer", ["ringbuf", "perf"])
def test_handled_signal(buffer: str) -> None:
    child = Child("""
install(signal.SIGUSR1)
say("ready", HANDLER)
sys.stdin.readline()
""")
    with child:
        handler = int(child.line()[1])
        with traced(child, buffer=buffer) as t:
            os.kill(child.pid, signal.SIGUSR1)
            # Live: the fate arrives while tracing, not only when it ends.
            t.poll_until(lambda items: any(isinstance(i, Fate) for i in items))
        child.tell()
        assert child.wait() == 0
    [send] = t.sends(signal.SIGUSR1)
    fate = t.fate_of(send)
    assert send.fate is fate
    assert (fate.effect, fate.disposition, fate.pid, fate.tid) == (
        "handled", "handler", child.pid, child.pid)
    assert fate.handler == handler and fate.to_dict()["handler"] == hex(handler)
    assert {"SA_SIGINFO", "SA_RESTART"} <= set(fate.flag_names)
    assert fate.latency_ns is not None and fate.latency_ns > 0
    assert fate.ktime_ns > send.ktime_ns


def test_sigterm_default_action_terminates_with_cause_sigterm() -> None:
    child = Child("""
say("ready")
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGTERM)
            assert child.wait() == -signal.SIGTERM
    [send] = t.sends(signal.SIGTERM)
    fate = t.fate_of(send)
    assert (fate.effect, fate.cause, fate.disposition) == ("terminated", signal.SIGTERM, "default")
    assert fate.to_dict()["cause"] == {"sig": 15, "signal": "SIGTERM"}
    assert fate.pid == child.pid and fate.latency_ns is not None and fate.latency_ns > 0
    assert not t.sends(signal.SIGKILL)  # the kernel's SIGKILL is no signal of ours
    assert len(t.fates) == 1


def _core_dump_dir(tmp_path: Path) -> str:
    """Where the child runs: core files land in its cwd (or go to a program, or to an absolute
    path the system chose); either way, never into the checkout."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if not pattern:
        pytest.skip("core dumps are disabled (empty core_pattern)")
    return str(tmp_path)


CORE_CHILD = """
import resource
resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
say("ready")
sys.stdin.readline()
"""


@pytest.mark.parametrize("how, sig", [
    ("ctypes.string_at(0)", signal.SIGSEGV),   # a real fault: kernel-generated
    ("os.abort()", signal.SIGABRT),            # abort(): raise() through tgkill
])
def test_core_dump(tmp_path: Path, how: str, sig: int) -> None:
    child = Child(CORE_CHILD + how + "\n", cwd=_core_dump_dir(tmp_path))
    try:
        with child:
            child.line()
            with traced(child) as t:
                child.tell()
                assert child.wait() == -sig
    finally:
        for core in tmp_path.glob("core*"):  # tens of MB each: not kept with pytest's tmp dirs
            core.unlink()
    [send] = t.sends(sig)
    fate = t.fate_of(send)
    assert (fate.effect, fate.cause, fate.disposition) == ("core_dumped", sig, "default")
    assert fate.exit_code == sig | 0x80
    assert fate.tid == child.pid and fate.latency_ns is not None and fate.latency_ns >= 0


def test_stop_then_continue() -> None:
    child = Child("""
say("ready")
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGSTOP)
            _, status = os.waitpid(child.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
            os.kill(child.pid, signal.SIGCONT)
            _, status = os.waitpid(child.pid, os.WCONTINUED)
            assert os.WIFCONTINUED(status)
        child.tell()
        assert child.wait() == 0
    [stop] = t.sends(signal.SIGSTOP)
    [cont] = t.sends(signal.SIGCONT)
    stopped = t.fate_of(stop)
    assert (stopped.effect, stopped.disposition, stopped.tid) == ("stopped", "default", child.pid)
    assert stopped.latency_ns is not None and stopped.latency_ns > 0
    assert t.fate_of(cont).effect == "continued"


def test_blocked_signal_is_pending_when_tracing_stops() -> None:
    child = Child("""
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
say("ready")
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGUSR1)
        child.tell()
        assert child.wait() == 0
    [send] = t.sends(signal.SIGUSR1)
    fate = t.fate_of(send)
    assert (fate.effect, fate.latency_ns, fate.disposition) == ("pending", None, None)


def test_coalesced_second_signal_has_no_fate() -> None:
    child = Child("""
install(signal.SIGUSR1)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
say("ready")
sys.stdin.readline()
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])  # delivered here, once
say("unblocked")
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGUSR1)
            os.kill(child.pid, signal.SIGUSR1)
            child.tell()
            assert child.line() == ["unblocked"]
        child.tell()
        assert child.wait() == 0
    first, second = t.sends(signal.SIGUSR1)
    assert (first.outcome, second.outcome) == ("delivered", "already_pending")
    assert [f.id for f in t.fates] == [first.id]
    assert t.fate_of(first).effect == "handled" and second.fate is None


def test_sigwaitinfo_consumes() -> None:
    child = Child("""
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
say("ready")
info = signal.sigwaitinfo([signal.SIGUSR1])
say("got", info.si_signo)
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGUSR1)
            assert child.line() == ["got", str(int(signal.SIGUSR1))]
        child.tell()
        assert child.wait() == 0
    [send] = t.sends(signal.SIGUSR1)
    fate = t.fate_of(send)
    assert (fate.effect, fate.tid, fate.disposition) == ("consumed", child.pid, None)
    assert fate.latency_ns is not None and fate.latency_ns > 0


def test_group_signal_taken_by_a_worker_thread() -> None:
    child = Child("""
install(signal.SIGUSR1)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])  # the main thread never takes it
done = threading.Event()
def worker():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    say("ready", threading.get_native_id())
    done.wait()
thread = threading.Thread(target=worker)
thread.start()
sys.stdin.readline()
done.set()
thread.join()
""")
    with child:
        worker_tid = int(child.line()[1])
        with traced(child) as t:
            os.kill(child.pid, signal.SIGUSR1)
            t.poll_until(lambda items: any(isinstance(i, Fate) for i in items))
        child.tell()
        assert child.wait() == 0
    [send] = t.sends(signal.SIGUSR1)
    assert send.group and send.target_pid == child.pid
    fate = t.fate_of(send)
    assert (fate.effect, fate.pid, fate.tid) == ("handled", child.pid, worker_tid)
    assert fate.tid != fate.pid


def test_cli_json_fate_record_follows_its_signal() -> None:
    child = Child("""
say("ready")
sys.stdin.readline()
""")
    src = str(Path(__file__).resolve().parents[2] / "src")
    cli = subprocess.Popen(
        [sys.executable, "-m", "sigscope", "trace", "--fate", "-j", "-T", str(child.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": src})
    with child:
        child.line()
        ready, _, _ = select.select([cli.stderr], [], [], TIMEOUT)
        assert ready and cli.stderr.readline().startswith("Tracing")  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait() == -signal.SIGTERM
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=TIMEOUT)
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    [sent] = [r for r in records if r["type"] == "signal" and r["signal"] == "SIGTERM"]
    [fate] = [r for r in records if r["type"] == "fate"]
    assert records.index(fate) > records.index(sent)
    assert fate["id"] == sent["id"] and fate["effect"] == "terminated"
    assert fate["cause"] == {"sig": 15, "signal": "SIGTERM"}
    assert fate["thread"]["pid"] == child.pid and fate["latency_ns"] > 0
