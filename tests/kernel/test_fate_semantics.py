"""--fate semantics with real processes: a SIGCONT continues only what was stopped, and a
signal still pending when tracing stops names where it is pending."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from fate_children import Child, traced

from sigscope.fate import Fate
from sigscope.send import send_signal
from sigscope.tracer import trace

TIMEOUT = 10.0


def test_sigcont_to_a_running_process_continues_nothing() -> None:
    """`sleep 30 & kill -CONT $!`: ignored, and no `continued` fate."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        tracer = trace(fate=True, target_ids=[sleeper.pid]).start()
        items: list = []
        try:
            os.kill(sleeper.pid, signal.SIGCONT)
            # Then stop and continue it: that SIGCONT did continue it (and its fate is the
            # sign that the first one's record has been read).
            os.kill(sleeper.pid, signal.SIGSTOP)
            _, status = os.waitpid(sleeper.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
            os.kill(sleeper.pid, signal.SIGCONT)
            _, status = os.waitpid(sleeper.pid, os.WCONTINUED)
            assert os.WIFCONTINUED(status)
        finally:
            items += tracer.close()
    finally:
        sleeper.kill()
        sleeper.wait(TIMEOUT)
    conts = [i for i in items if not isinstance(i, Fate) and i.sig == signal.SIGCONT]
    assert [e.outcome for e in conts] == ["ignored", "ignored"]
    fates = {f.id: f for f in items if isinstance(f, Fate)}
    assert conts[0].id not in fates  # it resumed nothing
    second = fates[conts[1].id]
    assert (second.effect, second.pid, second.tid) == ("continued", sleeper.pid, sleeper.pid)


def test_pending_signal_names_its_process_and_thread() -> None:
    child = Child("""
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])
say("ready")
sys.stdin.readline()
""")
    with child:
        child.line()
        with traced(child) as t:
            os.kill(child.pid, signal.SIGUSR1)                        # to the process
            send_signal("tgkill", signal.SIGUSR2, pid=child.pid, tid=child.pid)  # one thread
        child.tell()
        assert child.wait() == 0
    [to_process] = t.sends(signal.SIGUSR1)
    [to_thread] = t.sends(signal.SIGUSR2)
    comm = to_process.target_comm
    assert t.fate_of(to_process).effect == t.fate_of(to_thread).effect == "pending"
    assert t.fate_of(to_process).to_dict()["thread"] == {"pid": child.pid, "tid": None,
                                                         "comm": comm}
    assert t.fate_of(to_thread).to_dict()["thread"] == {"pid": child.pid, "tid": child.pid,
                                                        "comm": comm}


SIGNALFD_READER = r"""
import ctypes, os, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])
print("ready", flush=True)
sys.stdin.readline()                              # tracing has started
mask = ctypes.c_uint64((1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1)))
fd = libc.signalfd(-1, ctypes.byref(mask), 0)     # glibc passes the kernel 8 bytes of it
assert fd >= 0, ctypes.get_errno()
print("signalfd", fd, flush=True)
sys.stdin.readline()                              # both signals are pending
data = os.read(fd, 256)                           # one read, two signalfd_siginfo
print("read", *[struct.unpack_from("I", data, off)[0] for off in range(0, len(data), 128)],
      flush=True)
sys.stdin.readline()
"""


def test_signals_read_from_a_signalfd_are_consumed() -> None:
    reader = subprocess.Popen([sys.executable, "-c", SIGNALFD_READER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    items: list = []
    try:
        assert reader.stdout.readline().split() == ["ready"]
        tracer = trace(fate=True, target_ids=[reader.pid]).start()
        try:
            reader.stdin.write("go\n")
            reader.stdin.flush()
            assert reader.stdout.readline().split()[0] == "signalfd"
            os.kill(reader.pid, signal.SIGUSR1)
            os.kill(reader.pid, signal.SIGUSR2)
            reader.stdin.write("go\n")
            reader.stdin.flush()
            assert reader.stdout.readline().split() == ["read", "10", "12"]
            reader.stdin.write("go\n")
            reader.stdin.flush()
            assert reader.wait(TIMEOUT) == 0
        finally:
            items += tracer.close()
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.wait(TIMEOUT)
    sends = [i for i in items if not isinstance(i, Fate) and i.via == "kill"]
    fates = {f.id: f for f in items if isinstance(f, Fate)}
    assert [(e.sig, fates[e.id].effect, fates[e.id].pid) for e in sends] == [
        (signal.SIGUSR1, "consumed", reader.pid), (signal.SIGUSR2, "consumed", reader.pid)]
    assert all(fates[e.id].latency_ns > 0 for e in sends)
