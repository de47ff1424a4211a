"""Container context the kernel reads at the event (issue 14): the sender's cgroup v2 id
(bpf_get_current_cgroup_id) on syscall and kernel records, and both sides' pids in their own
pid namespace, checked against /proc/<pid>/cgroup (through the directory's kernfs handle) and
/proc/<pid>/status NSpid. Every test waits for the records it asserts on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Target, started

from sigscope.containers import cgroup2_mount, cgroup_id_of
from sigscope.send import send_signal
from sigscope.tracer import trace

SIGUSR1 = 10
ME = os.getpid()


def own_cgroup_id(pid: int) -> int:
    """The id of pid's cgroup v2 directory (its kernfs handle), from /proc/<pid>/cgroup."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")  # the kmatrix guests mount one
    (line,) = [entry for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
               if entry.startswith("0::")]
    return cgroup_id_of(mount.mount_point + line[3:].rstrip("/"))


def test_sender_cgroup_of_calls_and_kernel_signals() -> None:
    with Target() as target:
        collector = started(trace(buffer_size=1 << 20, pids=[ME, target.pid]))
        try:
            send_signal("kill", SIGUSR1, pid=target.pid)
            assert target.command("pipe") == "ok"  # a kernel SIGPIPE, sent in the target
            got = collector.wait_count(
                lambda e: (e.via == "kill" and e.sender_pid == ME)
                or (e.via == "kernel" and e.sender_pid == target.pid), 2)
        finally:
            collector.finish()
        mine, theirs = own_cgroup_id(ME), own_cgroup_id(target.pid)
    assert [(e.via, e.sender_cgroup) for e in got] == [("kill", mine), ("kernel", theirs)]
