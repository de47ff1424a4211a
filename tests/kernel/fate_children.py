"""Children for the --fate kernel tests (test_fate_live, test_fate_semantics, test_no_btf): a
Python child that installs a known C-level handler and obeys stdin, and the events and fates
of its signals (a helper module, not a test module).

Each child prints one line when it is set up (and what the test needs to know: its handler's
address, its worker's tid) and then obeys stdin; waiting for those lines, for its exit, or for
waitpid(WUNTRACED/WCONTINUED) is the only synchronisation.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Callable

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
