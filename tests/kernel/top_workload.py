"""The workload of the `top` kernel tests (test_top, test_no_btf): a subprocess with a unique
comm that sends a known set of signals, what it is expected to have counted, and `sigscope top`
as a subprocess (a helper module, not a test module)."""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import uuid
from collections import Counter as Tally
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
SIGUSR1, SIGUSR2, SIGKILL, SIGCHLD = 10, 12, 9, 17
MISSING_PID = 0x7FFFFFF0  # above any pid_max: kill() fails with ESRCH
BAD_SIGNAL = 99           # kill() fails with EINVAL

# Sends of the workload to its first child, per syscall.
PER_VIA = {"kill": 5, "tkill": 4, "tgkill": 3, "rt_sigqueueinfo": 2, "rt_tgsigqueueinfo": 6,
           "pidfd_send_signal": 7}
FANOUT_CALLS = 2          # kill(-pgid, SIGUSR2) to a group of three children
CHILDREN = 3

WORKLOAD = r"""
import ctypes, json, os, signal, sys
from sigscope.send import SendError, send_signal
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)   # PR_SET_NAME
per_via, cfg = json.loads(sys.argv[2]), json.loads(sys.argv[3])
signal.signal(signal.SIGUSR1, signal.SIG_IGN)   # inherited: the children ignore them too
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.signal(signal.SIGCHLD, lambda *_: None)  # SIGCHLD outcome: delivered
hold_r, hold_w = os.pipe()
ready_r, ready_w = os.pipe()
children = []
for i in range(cfg["children"]):
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        os.write(ready_w, b"x")
        os.read(hold_r, 1)
        os._exit(0)
    os.setpgid(pid, children[0] if children else pid)
    children.append(pid)
for _ in children:
    os.read(ready_r, 1)
first = children[0]
for via, n in per_via.items():
    for _ in range(n):
        send_signal(via, signal.SIGUSR1, pid=first, tid=first)
def fails(**kw):
    try:
        send_signal("kill", **kw)
    except SendError:
        return
    raise SystemExit("expected a failure")
for _ in range(2):
    fails(sig=signal.SIGUSR1, pid=cfg["missing"])
    fails(sig=cfg["bad"], pid=first)
dropper = os.fork()
if dropper == 0:
    os.setuid(65534)
    try:
        send_signal("kill", signal.SIGUSR1, pid=first)
    except SendError:
        os._exit(0)
    os._exit(1)
assert os.waitpid(dropper, 0)[1] == 0
for _ in range(cfg["fanout"]):
    send_signal("kill", signal.SIGUSR2, pid=-first)
for pid in children:  # one at a time: a second SIGCHLD while one pends is "already_pending"
    send_signal("kill", signal.SIGKILL, pid=pid)
    os.waitpid(pid, 0)
print(json.dumps({"pid": os.getpid(), "children": children, "dropper": dropper}), flush=True)
sys.stdin.read()   # hold on until the test has read the counts
"""
WORKLOAD_CONFIG = {"children": CHILDREN, "missing": MISSING_PID, "bad": BAD_SIGNAL,
                   "fanout": FANOUT_CALLS}


def unique_comm() -> str:
    return "sgt" + uuid.uuid4().hex[:10]


class Workload:
    """The workload subprocess: run() sends everything and returns its pids; finish() lets it
    exit (its own SIGCHLD to us then follows)."""

    def __init__(self, comm: str) -> None:
        self.comm = comm
        env = dict(os.environ, PYTHONPATH=SRC)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKLOAD, comm, json.dumps(PER_VIA),
             json.dumps(WORKLOAD_CONFIG)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"workload failed (exit {self.proc.wait()})"
        return json.loads(line)

    def finish(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def expected_counts(comm: str, pids: dict) -> Tally:
    """(sender_pid, target_pid, target_comm, sig, via, result, outcome) -> signals sent."""
    me, first, children, dropper = pids["pid"], pids["children"][0], pids["children"], \
        pids["dropper"]
    want: Tally = Tally()
    for via, n in PER_VIA.items():
        want[(me, first, comm, SIGUSR1, via, 0, "ignored")] += n
    want[(me, MISSING_PID, None, SIGUSR1, "kill", -errno.ESRCH, None)] += 2
    # A send that generated nothing carries no target comm from the kernel: it is read from
    # /proc when the key is first read, and the children are gone by then.
    want[(me, first, None, BAD_SIGNAL, "kill", -errno.EINVAL, None)] += 2
    want[(dropper, first, None, SIGUSR1, "kill", -errno.EPERM, None)] += 1
    for child in children:
        want[(me, child, comm, SIGUSR2, "kill", 0, "ignored")] += FANOUT_CALLS
        want[(me, child, comm, SIGKILL, "kill", 0, "delivered")] += 1
        want[(child, me, comm, SIGCHLD, "kernel", None, "delivered")] += 1
    want[(dropper, me, comm, SIGCHLD, "kernel", None, "delivered")] += 1
    return want


def expected_total() -> int:
    """Everything the workload sends, its own exit SIGCHLD (to the test) not included."""
    return sum(PER_VIA.values()) + 2 + 2 + 1 + CHILDREN * (FANOUT_CALLS + 2) + 1


CLI = "import sys; from sigscope.cli.main import main; sys.exit(main())"


class TopProcess:
    """`sigscope top` as a subprocess; waits for its Tracing line (the programs are attached)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=SRC)
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "top", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.tracing_line = self._read_stderr_line(timeout=30)
        assert self.tracing_line.startswith("Tracing signals"), self.tracing_line

    def _read_stderr_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail("sigscope top printed no Tracing line")
        return self.proc.stderr.readline()

    def finish(self, timeout: float = 30) -> tuple[int, list[dict], str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, [json.loads(line) for line in out.splitlines()], err
