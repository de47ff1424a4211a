"""send_signal() through each of the six syscalls, checked by what a real child process receives.

The child blocks the signal and dequeues it with a raw rt_sigtimedwait syscall into a 128-byte
siginfo, so it can report si_code, si_pid and the whole 8-byte si_value. Not Python's
signal.sigwaitinfo(): it lacks si_value, and glibc's sigtimedwait() rewrites SI_TKILL to SI_USER,
which would hide the difference between kill and tkill/tgkill. The child prints a "ready" line
once the signal is blocked, and then one JSON line describing what it received.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sigscope.model.signals import SI_QUEUE, SI_TKILL, SI_USER
from sigscope.send import VIAS, SendError, send_signal

SIGUSR1 = 10
SIGRTMIN_PLUS_3 = 37  # with glibc (SIGRTMIN 34); clear of the 32 and 33 it keeps for itself
VALUE = 0x1122334455667788

CHILD = r"""
import ctypes, json, os, platform, signal, struct, sys, threading

sig = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR_RT_SIGTIMEDWAIT = {"x86_64": 128, "aarch64": 137}[platform.machine()]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def receive():
    sigset = ctypes.c_uint64(1 << (sig - 1))  # the kernel's sigset_t: 64 bits
    info = ctypes.create_string_buffer(128)
    timeout = Timespec(30, 0)
    got = libc.syscall(
        ctypes.c_long(NR_RT_SIGTIMEDWAIT), ctypes.byref(sigset), info, ctypes.byref(timeout),
        ctypes.c_long(8),
    )
    if got < 0:
        report = {"error": os.strerror(ctypes.get_errno())}
    else:
        signo, _, code = struct.unpack_from("=iii", info, 0)
        pid, uid = struct.unpack_from("=iI", info, 16)
        (value,) = struct.unpack_from("=Q", info, 24)
        report = {"signo": signo, "code": code, "pid": pid, "uid": uid, "value": value,
                  "tid": threading.get_native_id()}
    print(json.dumps(report), flush=True)


def announce():
    print("ready", os.getpid(), threading.get_native_id(), flush=True)


# Blocked before any thread starts, so every thread inherits the mask: the signal stays pending
# until a sigtimedwait() takes it, and a thread-directed one only in the thread it was sent to.
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
if sys.argv[2] == "thread":
    def worker():
        announce()
        receive()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
else:
    announce()
    receive()
"""


class Child:
    """A child process waiting for one signal, in its main thread or in a worker thread."""

    def __init__(self, sig: int, where: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(sig), where],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"child did not start: {line!r}"
        self.pid = int(line[1])
        self.tid = int(line[2])
        assert self.pid == self.proc.pid

    def report(self) -> dict:
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0
        report = json.loads(out)
        assert "error" not in report, report
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn():
    children = []

    def start(sig: int = SIGUSR1, where: str = "main") -> Child:
        child = Child(sig, where)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def assert_from_us(report: dict, sig: int, code: int) -> None:
    assert report["signo"] == sig
    assert report["code"] == code
    assert report["pid"] == os.getpid()
    assert report["uid"] == os.getuid()


def test_harness_reads_si_value_where_glibc_sigqueue_puts_it(spawn):
    """Checks the child's reader independently of send.py's siginfo builder."""

    class Sigval(ctypes.Union):
        _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, Sigval]
    child = spawn()
    assert libc.sigqueue(child.pid, SIGUSR1, Sigval(sival_ptr=VALUE)) == 0
    report = child.report()
    assert_from_us(report, SIGUSR1, SI_QUEUE)
    assert report["value"] == VALUE


def test_kill(spawn):
    child = spawn()
    send_signal("kill", SIGUSR1, pid=child.pid)
    assert_from_us(child.report(), SIGUSR1, SI_USER)


def test_tkill(spawn):
    child = spawn()
    send_signal("tkill", SIGUSR1, tid=child.tid)
    report = child.report()
    assert_from_us(report, SIGUSR1, SI_TKILL)
    assert report["tid"] == child.tid


def test_tgkill(spawn):
    child = spawn()
    send_signal("tgkill", SIGUSR1, pid=child.pid, tid=child.tid)
    assert_from_us(child.report(), SIGUSR1, SI_TKILL)


@pytest.mark.parametrize("sig", [SIGUSR1, SIGRTMIN_PLUS_3])
def test_rt_sigqueueinfo_carries_the_value(spawn, sig):
    child = spawn(sig)
    send_signal("rt_sigqueueinfo", sig, pid=child.pid, value=VALUE)
    report = child.report()
    assert_from_us(report, sig, SI_QUEUE)
    assert report["value"] == VALUE


def test_rt_tgsigqueueinfo_carries_the_value(spawn):
    child = spawn()
    send_signal("rt_tgsigqueueinfo", SIGUSR1, pid=child.pid, tid=child.tid, value=42)
    report = child.report()
    assert_from_us(report, SIGUSR1, SI_QUEUE)
    assert report["value"] == 42


def test_pidfd_send_signal_without_value_is_si_user(spawn):
    child = spawn()
    send_signal("pidfd_send_signal", SIGUSR1, pid=child.pid)
    assert_from_us(child.report(), SIGUSR1, SI_USER)


def test_pidfd_send_signal_with_value_is_si_queue(spawn):
    child = spawn()
    send_signal("pidfd_send_signal", SIGUSR1, pid=child.pid, value=VALUE)
    report = child.report()
    assert_from_us(report, SIGUSR1, SI_QUEUE)
    assert report["value"] == VALUE


def test_pidfd_send_signal_with_callers_pidfd(spawn):
    child = spawn()
    pidfd = os.pidfd_open(child.pid)
    try:
        send_signal("pidfd_send_signal", SIGUSR1, pidfd=pidfd)
        assert_from_us(child.report(), SIGUSR1, SI_USER)
        os.fstat(pidfd)  # still ours: send_signal must not close a pidfd it did not open
    finally:
        os.close(pidfd)


@pytest.mark.parametrize(
    ("via", "code", "value"),
    [("tgkill", SI_TKILL, None), ("tkill", SI_TKILL, None), ("rt_tgsigqueueinfo", SI_QUEUE, 7)],
)
def test_thread_directed_signal_reaches_the_worker_thread(spawn, via, code, value):
    """Only the worker waits; a signal sent to the wrong thread would time the child out."""
    child = spawn(where="thread")
    assert child.tid != child.pid
    send_signal(via, SIGUSR1, pid=child.pid, tid=child.tid, value=value)
    report = child.report()
    assert_from_us(report, SIGUSR1, code)
    assert report["tid"] == child.tid
    if value is not None:
        assert report["value"] == value


def test_tgkill_with_wrong_thread_group_is_esrch(spawn):
    child = spawn(where="thread")
    with pytest.raises(SendError) as info:
        send_signal("tgkill", SIGUSR1, pid=os.getpid(), tid=child.tid)
    assert info.value.errno == errno.ESRCH
    send_signal("tgkill", SIGUSR1, pid=child.pid, tid=child.tid)
    assert child.report()["tid"] == child.tid


def _unused_pid() -> int:
    # No pid can exceed pid_max, so this one never exists.
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


@pytest.mark.parametrize("via", VIAS)
def test_missing_process_is_esrch(via):
    pid = _unused_pid()
    with pytest.raises(SendError) as info:
        send_signal(via, SIGUSR1, pid=pid, tid=pid, value=1)
    assert info.value.errno == errno.ESRCH
    message = str(info.value)
    assert "ESRCH" in message and str(pid) in message and "\n" not in message


def test_esrch_message_format():
    pid = _unused_pid()
    with pytest.raises(SendError) as info:
        send_signal("kill", SIGUSR1, pid=pid)
    assert str(info.value) == f"kill({pid}, SIGUSR1) failed: ESRCH (No such process)"


@pytest.mark.parametrize("via", VIAS)
def test_invalid_signal_is_einval(via):
    # Aimed at ourselves: the kernel rejects signal 99 before anything could be delivered.
    before = signal.sigpending()
    with pytest.raises(SendError) as info:
        send_signal(via, 99, pid=os.getpid(), tid=os.getpid(), value=1)
    assert info.value.errno == errno.EINVAL
    assert "EINVAL" in str(info.value) and "SIG#99" in str(info.value)
    assert signal.sigpending() == before
