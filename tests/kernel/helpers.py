"""Shared pieces of the `sigscope trace` kernel tests: child processes we control (as signal
targets, senders and producers of kernel-generated signals) and event collection with timeouts.

A `Target` runs a tiny Python program that names itself `sigscope-tgt`, handles the common test
signals (so they are delivered, never fatal), optionally starts threads, prints one `ready` line
and then obeys one-line commands on stdin, answering each with one line (`ok ...` or
`err <errno>`). Waiting for those lines is the only synchronisation: no sleeps.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sigscope.bpf.program import program_info_by_id
from sigscope.model.event import Event
from sigscope.tracer import Tracer

SRC = str(Path(__file__).resolve().parents[2] / "src")
TARGET_COMM = "sigscope-tgt"
HANDLED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, 40)  # 40: SIGRTMIN+6 with glibc
DEFAULT_TIMEOUT = 60.0  # a bound, not a wait: generous for qemu (TCG) guests of the kernel matrix

TARGET_PROGRAM = r"""
import ctypes, errno, os, signal, struct, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"sigscope-tgt", 0, 0, 0)  # PR_SET_NAME: threads started later inherit it
for sig in (10, 12, 28, 40):
    signal.signal(sig, lambda *_: None)
stop = threading.Event()
tids = []
started = threading.Barrier(int(sys.argv[1]) + 1)
def park():
    tids.append(threading.get_native_id())
    started.wait()
    stop.wait()
threads = [threading.Thread(target=park, daemon=True) for _ in range(int(sys.argv[1]))]
for t in threads:
    t.start()
started.wait()


def reply(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def wait_for(sig):
    got = signal.sigtimedwait([sig], 10)
    reply("ok %d %d" % (got.si_signo, got.si_code) if got else "err timeout")


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def posix_timer(sig):
    # struct sigevent: sigval (8), signo (4), notify (4), then a union padding it to 64 bytes.
    sigevent = ctypes.create_string_buffer(64)
    struct.pack_into("=Qii", sigevent, 0, 0, sig, 0)  # SIGEV_SIGNAL
    timer = ctypes.c_void_p()
    try:
        rt = ctypes.CDLL("librt.so.1", use_errno=True)
    except OSError:
        rt = libc
    if rt.timer_create(1, sigevent, ctypes.byref(timer)) != 0:  # CLOCK_MONOTONIC
        return reply("err " + errno.errorcode[ctypes.get_errno()])
    spec = (Timespec * 2)(Timespec(0, 0), Timespec(0, 5_000_000))  # interval 0, value 5 ms
    if rt.timer_settime(timer, 0, spec, None) != 0:
        return reply("err " + errno.errorcode[ctypes.get_errno()])
    wait_for(sig)
    rt.timer_delete(timer)


reply("ready %d %s" % (os.getpid(), " ".join(map(str, tids))))
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "kill":
            os.kill(int(args[0]), int(args[1]))
            reply("ok")
        elif cmd == "setuid":
            os.setgroups([])
            os.setgid(int(args[0]))
            os.setuid(int(args[0]))
            reply("ok")
        elif cmd == "segv":
            ctypes.string_at(0)
        elif cmd == "segv_thread":  # a fault in a thread other than the main one
            crasher = threading.Thread(target=ctypes.string_at, args=(0,))
            crasher.start()
            crasher.join()
        elif cmd == "pipe":
            r, w = os.pipe()
            os.close(r)
            try:
                os.write(w, b"x")
                reply("err wrote")
            except BrokenPipeError:
                reply("ok")
        elif cmd in ("itimer", "posix_timer"):
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            if cmd == "itimer":
                signal.setitimer(signal.ITIMER_REAL, 0.005)
                wait_for(signal.SIGALRM)
            else:
                posix_timer(signal.SIGALRM)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
        elif cmd == "exit":
            sys.exit(int(args[0]) if args else 0)
        else:
            reply("err unknown")
    except OSError as err:
        reply("err " + errno.errorcode.get(err.errno, str(err.errno)))
"""


class Target:
    """A child process we control. `pid`, `tids` (its extra threads, not the main one)."""

    def __init__(self, threads: int = 0, pgid: int | None = None) -> None:
        """pgid: join that process group (0: lead a new one); None: stay in ours."""
        preexec = None
        if pgid is not None:
            def preexec() -> None:
                os.setpgid(0, pgid)
        # No faulthandler: it would re-raise a fault's SIGSEGV with a second, syscall, send.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TARGET_PROGRAM, str(threads)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=preexec,
        )
        self.pid = self.proc.pid
        words = self.read_line().split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.tids = [int(w) for w in words[2:]]

    def read_line(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"target {self.pid} said nothing for {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError(f"target {self.pid} exited: {self.proc.wait(5)}")
        return line.strip()

    def command(self, text: str, answer: bool = True) -> str:
        """Send one command; return its one-line answer (unless the command ends the child)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read_line() if answer else ""

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEFAULT_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Collector:
    """Polls a started tracer, keeping every event it decoded, until a predicate holds."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.events: list[Event] = []

    def wait_for(self, predicate: Callable[[list[Event]], bool],
                 timeout: float = DEFAULT_TIMEOUT) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s; events seen: "
                    f"{[e.to_dict() for e in self.events][-10:]}")
            self.events += self.tracer.poll(20)
        return self.events

    def wait_count(self, match: Callable[[Event], bool], count: int = 1,
                   timeout: float = DEFAULT_TIMEOUT) -> list[Event]:
        """Wait until `count` events match; return the matching ones."""
        self.wait_for(lambda events: sum(map(match, events)) >= count, timeout)
        return [e for e in self.events if match(e)]

    def finish(self) -> list[Event]:
        """Close the tracer (detach, drain) and return every event seen."""
        self.events += self.tracer.close()
        return self.events


def started(tracer: Tracer) -> Collector:
    tracer.start()
    return Collector(tracer)


def free_uid() -> int:
    """A uid no running process has: an unprivileged sender that cannot hit anyone else.
    Random, so that test runs going on at the same time do not pick the same one."""
    used = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                used.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                pass
    while True:
        uid = random.randrange(100_000, 1 << 30)
        if uid not in used:
            return uid


def bpf_prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds open (from its fdinfo)."""
    ids = set()
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(f"{fd_dir}/{fd}") as info:
                for line in info:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def wait_unloaded(prog_ids: Iterable[int], timeout: float = 2.0) -> set[int]:
    """Poll until none of prog_ids is loaded (the kernel frees them asynchronously); returns
    those still loaded at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = {i for i in prog_ids if program_info_by_id(i) is not None}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)  # polling an asynchronous kernel release: no event to wait on
