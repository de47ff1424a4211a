"""sigscope top on the real kernel: in-kernel counts equal exactly what a workload sent, per key.

The workload is a subprocess with a unique comm, and every counter here filters on that comm
(`-c`), so nothing else on the machine can show up in the counts. Children of the workload keep
the comm, so their SIGCHLD at exit (kernel-generated, sent by the exiting child) is counted too.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import urllib.request
from collections import Counter as Tally

import pytest
from top_workload import (
    BAD_SIGNAL,
    PER_VIA,
    SIGKILL,
    SIGUSR2,
    TopProcess,
    Workload,
    expected_counts,
    expected_total,
    unique_comm,
)

from sigscope import top
from sigscope.model.signals import signal_name


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
