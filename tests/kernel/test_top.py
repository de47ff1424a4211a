"""sigscope top on the real kernel: in-kernel counts equal exactly what a workload sent, per key.

The workload is a subprocess with a unique comm, and every counter here filters on that comm
(`-c`), so nothing else on the machine can show up in the counts. Children of the workload keep
the comm, so their SIGCHLD at exit (kernel-generated, sent by the exiting child) is counted too.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter as Tally
from pathlib import Path

import pytest

from sigscope import top
from sigscope.model.signals import signal_name

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


def observed(snapshot: top.Snapshot, comm: str) -> Tally:
    got: Tally = Tally()
    for key, n in snapshot.rows.items():
        assert key.sender_comm == comm
        got[(key.sender_pid, key.target_pid, key.target_comm, key.sig, key.via, key.result,
             key.outcome)] += n
    return got


@pytest.mark.parametrize("map_kind", ["percpu", "hash"])
def test_counts_equal_what_was_sent_per_key(map_kind: str) -> None:
    comm = unique_comm()
    with top.count(comm=comm, map_kind=map_kind) as counter:
        work = Workload(comm)
        try:
            pids = work.run()
            snapshot = counter.read()
        finally:
            work.finish()
    want = expected_counts(comm, pids)
    assert observed(snapshot, comm) == want
    assert snapshot.other == 0 and snapshot.lost == 0
    assert snapshot.total == sum(want.values()) == expected_total()
    vias = {key.via for key in snapshot.rows}
    assert vias == {"kernel", *PER_VIA}


def test_filters_limit_the_keys() -> None:
    comm = unique_comm()
    counters = {
        "usr2": top.count(comm=comm, signals="USR2"),
        "kernel": top.count(comm=comm, vias=["kernel"]),
        "failed": top.count(comm=comm, failed_only=True),
        "syscalls_no_kill": top.count(comm=comm, exclude_signals="KILL", kill_only=True),
        "tgkill": top.count(comm=comm, vias=["tgkill"]),
    }
    for counter in counters.values():
        counter.start()
    try:
        work = Workload(comm)
        try:
            pids = work.run()
            got = {name: observed(c.read(), comm) for name, c in counters.items()}
        finally:
            work.finish()
    finally:
        for counter in counters.values():
            counter.close()
    want = expected_counts(comm, pids)

    def only(predicate) -> Tally:
        return Tally({key: n for key, n in want.items() if predicate(key)})

    assert got["usr2"] == only(lambda k: k[3] == SIGUSR2)
    assert got["kernel"] == only(lambda k: k[4] == "kernel")
    assert got["failed"] == only(lambda k: k[5] is not None and k[5] < 0)
    # -e excludes KILL and nothing else: the sends of signal 99 (EINVAL) are still counted.
    assert got["syscalls_no_kill"] == only(lambda k: k[4] != "kernel" and k[3] != SIGKILL)
    assert any(k[3] == BAD_SIGNAL for k in got["syscalls_no_kill"])
    assert got["tgkill"] == only(lambda k: k[4] == "tgkill")
    assert sum(got["failed"].values()) == 5


def test_target_and_sender_pid_filters() -> None:
    # The workload's pids are known only once it runs: filter on our own signals instead.
    me = os.getpid()
    previous = signal.signal(SIGUSR2, signal.SIG_IGN)
    try:
        with top.count(pids=[me], target_ids=[me], signals="USR2") as counter:
            for _ in range(3):
                os.kill(me, SIGUSR2)
            os.kill(1, 0)  # another target and signal: not counted
            snapshot = counter.read()
    finally:
        signal.signal(SIGUSR2, previous)
    assert [(k.sender_pid, k.target_pid, k.via, k.result, n)
            for k, n in snapshot.rows.items()] == [(me, me, "kill", 0, 3)]


def test_map_full_counts_the_overflow_in_other() -> None:
    comm = unique_comm()
    with top.count(comm=comm, max_keys=4) as counter:
        work = Workload(comm)
        try:
            pids = work.run()
            snapshot = counter.read()
        finally:
            work.finish()
    want = expected_counts(comm, pids)
    assert len(want) > 10
    assert snapshot.keys == 4 and len(snapshot.rows) == 4
    assert snapshot.other > 0
    assert sum(snapshot.rows.values()) + snapshot.other == sum(want.values())
    for key, n in observed(snapshot, comm).items():
        assert want[key] == n  # whatever was kept is exact


# --- the command line --------------------------------------------------------------------------

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


def metrics_url(tracing_line: str) -> str:
    return tracing_line.split("metrics at ", 1)[1].split(")", 1)[0]


def test_prometheus_endpoint_serves_real_counts_then_sigint_exits_cleanly() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    comm = unique_comm()
    running = TopProcess("-c", comm, "-j", "-i", "0.2", "--prometheus", "127.0.0.1:0",
                         "--labels", "signal,via,outcome,error,sender_comm,target_comm")
    try:
        work = Workload(comm)
        try:
            pids = work.run()
            with urllib.request.urlopen(metrics_url(running.tracing_line), timeout=10) as reply:
                assert reply.status == 200
                text = reply.read().decode()
        finally:
            work.finish()
    finally:
        running.proc.send_signal(signal.SIGINT)
    code, intervals, err = running.finish()
    assert code == 0, err

    want = expected_counts(comm, pids)
    by_labels: Tally = Tally()
    for (_s, _t, target_comm, sig, via, result, outcome), n in want.items():
        error = {-errno.ESRCH: "ESRCH", -errno.EINVAL: "EINVAL", -errno.EPERM: "EPERM"}.get(
            result, "")
        by_labels[(signal_name(sig), via, outcome or "", error, comm, target_comm or "")] += n
    scraped: Tally = Tally()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for sample in families["sigscope_signals"].samples:
        if sample.name != "sigscope_signals_total" or sample.labels["sender_comm"] != comm:
            continue
        labels = sample.labels
        scraped[(labels["signal"], labels["via"], labels["outcome"], labels["error"],
                 labels["sender_comm"], labels["target_comm"])] += int(sample.value)
    assert scraped == by_labels
    assert families["sigscope_lost_events"].samples[0].value == 0
    assert families["sigscope_map_full"].samples[0].value == 0

    # --json: one object per interval; with the final partial one they add up to everything.
    assert intervals and all(i["type"] == "interval" for i in intervals)
    assert intervals[-1]["final"] is True and not any(i["final"] for i in intervals[:-1])
    for interval in intervals:
        assert set(interval) >= {"time", "interval_s", "rows", "total", "other", "lost"}
        assert interval["total"] == sum(r["count"] for r in interval["rows"]) + interval["other"]
    # The workload's own exit adds one SIGCHLD (to this test process) after its counts.
    assert sum(i["total"] for i in intervals) == sum(want.values()) + 1
    summed: Tally = Tally()
    for interval in intervals:
        for row in interval["rows"]:
            assert set(row) >= {"sender", "target", "sig", "signal", "via", "result", "outcome",
                                "count", "rate"}
            if row["target"]["pid"] == os.getpid():
                continue  # the workload's exit SIGCHLD
            summed[(row["sender"]["pid"], row["target"]["pid"], row["target"]["comm"],
                    row["sig"], row["via"], row["result"], row["outcome"])] += row["count"]
    assert summed == want


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "duration"])
def test_clean_exit_prints_a_last_partial_interval(how: str) -> None:
    comm = unique_comm()
    args = ["-c", comm, "-j", "-i", "120"]
    if how == "duration":
        # The workload takes well under a second here, several seconds in a qemu (TCG) guest
        # of the kernel matrix, where Python starts ~10x slower.
        args += ["-d", "15"]
    started = time.monotonic()
    running = TopProcess(*args)
    work = Workload(comm)
    work.run()
    work.finish()
    if how != "duration":
        running.proc.send_signal(getattr(signal, how))
    code, intervals, err = running.finish()
    assert code == 0, err
    assert time.monotonic() - started < 120  # stopped before the first interval ended
    assert len(intervals) == 1 and intervals[0]["final"] is True
    # Every signal the workload sent, plus its exit SIGCHLD.
    assert intervals[0]["total"] == expected_total() + 1
    assert "signals counted" in err and "Traceback" not in err
