"""`--fate` with real processes: deliveries, handlers, deaths, core dumps, stops, pending and
consumed signals, a group signal taken by a non-main thread, coalescing.

Each child prints one line when it is set up (and what the test needs to know: its handler's
address, its worker's tid) and then obeys stdin; waiting for those lines, for its exit, or for
waitpid(WUNTRACED/WCONTINUED) is the only synchronisation.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sigscope.fate import Fate
from sigscope.model.event import Event
from sigscope.tracer import Tracer, trace

TIMEOUT = 60.0  # a bound, not a wait: generous for qemu (TCG) guests of the kernel matrix

# Installs a C-level handler with libc's sigaction: the handler is libc's getpid (harmless when
# called as handler(signo, info, ctx)), so the test knows its address exactly.
PRELUDE = r"""
import ctypes, os, signal, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
SA_SIGINFO, SA_RESTART = 0x4, 0x10000000
HANDLER = ctypes.cast(libc.getpid, ctypes.c_void_p).value

def install(sig, flags=SA_SIGINFO | SA_RESTART):
    # glibc x86_64/aarch64 struct sigaction: handler, sa_mask[128], int flags, restorer.
    act = ctypes.create_string_buffer(struct.pack("=Q128si4xQ", HANDLER, b"", flags, 0))
    assert libc.sigaction(sig, act, None) == 0, ctypes.get_errno()

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()
"""


class Child:
    """A Python child running PRELUDE + body; its stdout lines are the only sync points."""

    def __init__(self, body: str, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + body], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=cwd)
        self.pid = self.proc.pid

    def line(self) -> list[str]:
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        assert ready, "child did not answer"
        text = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert text, f"child ended early (status {self.proc.poll()})"
        return text.split()

    def tell(self, text: str = "go") -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


class Traced:
    """Events and fates of one child's signals; collected until close()."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.items: list[Event | Fate] = []

    def poll_until(self, done: Callable[[list], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done(self.items):
            assert time.monotonic() < deadline, f"timed out; have {self.items}"
            self.items += self.tracer.poll(20)

    def close(self) -> None:
        self.items += self.tracer.close()

    def __enter__(self) -> Traced:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sends(self, sig: int) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event) and i.sig == sig]

    @property
    def fates(self) -> list[Fate]:
        return [i for i in self.items if isinstance(i, Fate)]

    def fate_of(self, event: Event) -> Fate:
        matching = [f for f in self.fates if f.id == event.id]
        assert len(matching) == 1, (event, self.fates)
        return matching[0]


def traced(child: Child, **kwargs) -> Traced:
    return Traced(trace(fate=True, target_ids=[child.pid], **kwargs).start())


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
