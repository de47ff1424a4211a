"""--cgroup and --container in the kernel (issue 14): cgroups made by the test with the names
docker and the kubelet/containerd give them, processes moved into them signalling each other
and signalled from outside. A record is kept when its sender's or its recipient's cgroup is
the filter's or below it; every other record must never reach user space (the tracer is
drained at close: a record not seen was never written). With the tracefs generate (no BTF)
only the sender side can match."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from cgroup_fixtures import made_cgroup, move, unique_top
from helpers import SRC, Target, started

from sigscope import cgroup_filter
from sigscope.errors import SetupError
from sigscope.programs import context
from sigscope.programs import signal as probes
from sigscope.tracer import trace

# Every test on both ways of learning a call (conftest.py entry_path).
pytestmark = pytest.mark.usefixtures("entry_path")

SIGPIPE, SIGURG = 13, 23   # SIGURG: ignored by default, still generated (and traced)
ME = os.getpid()
NOBODY = 4_000_000         # above pid_max here: kill() fails with ESRCH, generating nothing
DOCKER_ID = uuid.uuid4().hex + uuid.uuid4().hex
CRI_ID = uuid.uuid4().hex + uuid.uuid4().hex
POD_UID = str(uuid.uuid4())
POD = ("kubepods.slice/kubepods-burstable.slice/"
       f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice")
PATHS = [pytest.param("tp_btf", marks=pytest.mark.needs("btf_vmlinux", "tp_btf")),
         "tracepoint"]


class World:
    """Targets in three cgroups under a fresh top: `docker` (and `docker_leader`, which leads
    a process group that `cron_member` joins), `cri` in a pod, `cron` in a plain service."""

    def __init__(self, stack: ExitStack) -> None:
        top = unique_top()
        self.docker_path, _ = stack.enter_context(
            made_cgroup(f"{top}/system.slice/docker-{DOCKER_ID}.scope"))
        self.cri_path, _ = stack.enter_context(
            made_cgroup(f"{top}/{POD}/cri-containerd-{CRI_ID}.scope"))
        self.cron_path, _ = stack.enter_context(made_cgroup(f"{top}/system.slice/cron.service"))
        self.top = f"/{top}"
        self.docker = stack.enter_context(Target())
        self.docker_leader = stack.enter_context(Target(pgid=0))
        self.cron_member = stack.enter_context(Target(pgid=self.docker_leader.pid))
        self.cri = stack.enter_context(Target())
        self.cron = stack.enter_context(Target())
        for target, path in ((self.docker, self.docker_path),
                             (self.docker_leader, self.docker_path),
                             (self.cron_member, self.cron_path), (self.cri, self.cri_path),
                             (self.cron, self.cron_path)):
            move(target.pid, path)

    @property
    def pids(self) -> set[int]:
        return {ME, self.docker.pid, self.docker_leader.pid, self.cron_member.pid,
                self.cri.pid, self.cron.pid}


@pytest.fixture
def world() -> Iterator[World]:
    with ExitStack() as stack:
        yield World(stack)


def kill(sender: Target | None, pid: int, sig: int = SIGURG) -> None:
    """kill(pid, sig) from `sender` (None: this test), which must have returned before the
    next step: its record is written by then."""
    if sender is None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    else:
        assert sender.command(f"kill {pid} {sig}") in ("ok", "err ESRCH")


def run(world: World, path: str, cgroups: list[tuple[int, int]]) -> set[tuple]:
    """The sends of the scenario under the filter: {(via, sender, target, arg pid)}."""
    w = world
    tracer = trace(buffer_size=1 << 20, signals=[SIGURG, SIGPIPE], cgroups=cgroups)
    tracer.recipient_task = path == "tp_btf"
    if cgroups and context.cgroup_layout() is None:
        with pytest.raises(SetupError, match="BTF"):  # no way to read a task's ancestry
            tracer.start()
        pytest.skip("no kernel BTF: the cgroup filters refuse to start (checked)")
    collector = started(tracer)
    try:
        kill(w.docker, w.cron.pid)            # docker -> cron
        kill(w.cron, w.docker.pid)            # cron -> docker
        kill(None, w.docker.pid)              # outside -> docker
        kill(None, w.cri.pid)                 # outside -> pod container
        kill(w.cri, w.cron.pid)               # pod container -> cron
        kill(None, w.cron.pid)                # outside -> cron
        kill(w.cron, ME)                      # cron -> outside
        kill(w.docker, NOBODY)                # docker -> nobody (ESRCH)
        kill(w.cron, NOBODY)                  # cron -> nobody
        kill(None, -w.docker_leader.pid)      # outside -> a group: one docker, one cron
        kill(w.docker, -w.docker_leader.pid)  # docker -> the same group: both kept with it
        assert w.docker.command("pipe") == "ok"   # the kernel's SIGPIPE in docker
        assert w.cron.command("pipe") == "ok"     # and in cron
    finally:
        events = collector.finish()
    assert tracer.lost == 0
    return {(e.via, e.sender_pid, e.target_pid, e.arg_pid) for e in events
            if e.sender_pid in w.pids}


def expected(world: World, sender_in: set[int], recipient_in: set[int],
             recipients_known: bool) -> set[tuple]:
    """The records of run() whose sender is in sender_in, or (recipients_known) whose
    recipient is in recipient_in."""
    w = world
    group = {w.docker_leader.pid, w.cron_member.pid}
    sends = [("kill", w.docker.pid, w.cron.pid, w.cron.pid),
             ("kill", w.cron.pid, w.docker.pid, w.docker.pid),
             ("kill", ME, w.docker.pid, w.docker.pid),
             ("kill", ME, w.cri.pid, w.cri.pid),
             ("kill", w.cri.pid, w.cron.pid, w.cron.pid),
             ("kill", ME, w.cron.pid, w.cron.pid),
             ("kill", w.cron.pid, ME, ME),
             ("kill", w.docker.pid, NOBODY, NOBODY),
             ("kill", w.cron.pid, NOBODY, NOBODY),
             *[("kill", ME, member, -w.docker_leader.pid) for member in group],
             *[("kill", w.docker.pid, member, -w.docker_leader.pid) for member in group],
             ("kernel", w.docker.pid, w.docker.pid, None),
             ("kernel", w.cron.pid, w.cron.pid, None)]
    return {s for s in sends
            if s[1] in sender_in or (recipients_known and s[2] in recipient_in)}


def recipients_known(path: str) -> bool:
    return path == "tp_btf" and context.cgroup_layout() is not None


@pytest.mark.parametrize("path", PATHS)
def test_cgroup_matches_either_side(world: World, path: str) -> None:
    w = world
    got = run(w, path, [cgroup_filter.of_path(w.docker_path)])
    docker = {w.docker.pid, w.docker_leader.pid}
    assert got == expected(w, docker, docker, recipients_known(path))
    assert ("kill", w.docker.pid, NOBODY, NOBODY) in got   # a send that reached nobody


@pytest.mark.parametrize("path", PATHS)
def test_a_cgroup_takes_everything_below_it(world: World, path: str) -> None:
    w = world
    got = run(w, path, [cgroup_filter.of_path(f"{w.top}/system.slice")])
    below = {w.docker.pid, w.docker_leader.pid, w.cron_member.pid, w.cron.pid}
    assert got == expected(w, below, below, recipients_known(path))
    assert not any(w.cri.pid in (s[1], s[2]) and ME in (s[1], s[2]) for s in got)


@pytest.mark.parametrize("path", PATHS)
def test_container_prefix_matches_its_cgroup(world: World, path: str) -> None:
    w = world
    pairs = cgroup_filter.of_container(CRI_ID[:12])
    assert pairs == [cgroup_filter.of_path(w.cri_path)]
    got = run(w, path, pairs)
    assert got == expected(w, {w.cri.pid}, {w.cri.pid}, recipients_known(path))
    assert ("kill", w.cri.pid, w.cron.pid, w.cron.pid) in got


def test_without_the_filter_every_send_is_seen(world: World) -> None:
    w = world
    got = run(w, "tp_btf" if probes.recipient_source_is_task() else "tracepoint", [])
    assert got == expected(w, w.pids, set(), False)


def test_top_counts_only_the_cgroups_signals(world: World) -> None:
    from sigscope import top

    w = world
    with top.count(signals="URG", cgroups=[cgroup_filter.of_path(w.docker_path)]) as counter:
        kill(w.docker, w.cron.pid)            # docker -> cron: counted (sender)
        kill(w.cron, w.cri.pid)               # cron -> pod container: not counted
        kill(None, w.cron.pid)                # outside -> cron: not counted
        kill(None, w.docker.pid)              # outside -> docker: counted where known
        snapshot = counter.read()
    rows = {(k.sender_pid, k.target_pid): n for k, n in snapshot.rows.items()
            if k.sender_pid in w.pids}
    expected = {(w.docker.pid, w.cron.pid): 1}
    if recipients_known("tp_btf" if probes.recipient_source_is_task() else "tracepoint"):
        expected[(ME, w.docker.pid)] = 1
    assert rows == expected


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigscope", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})


def test_cli_bad_cgroups_and_containers_are_one_line_exit_2(world: World) -> None:
    for args in (["--cgroup", f"{world.top}/no-such"], ["--cgroup", "/proc"],
                 ["--cgroup", f"{world.top}/../x"], ["--container", "XYZ"],
                 ["--container", uuid.uuid4().hex]):
        for command in ("trace", "top"):
            run = cli(command, *args, "-d", "1")
            assert (run.returncode, run.stdout) == (2, ""), (args, run.stderr)
            assert len(run.stderr.splitlines()) == 1 and "sigscope: error: --c" in run.stderr


def test_cli_trace_with_a_container_prefix(world: World) -> None:
    w = world
    proc = subprocess.Popen([sys.executable, "-m", "sigscope", "trace", "-j", "-s", "URG",
                             "--container", DOCKER_ID[:16]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert proc.stderr.readline().startswith("Tracing")
        kill(w.cron, w.cri.pid)               # outside the container: never printed
        kill(w.docker, w.cron.pid)            # from inside: printed
        line = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert (line["sender"]["pid"], line["target"]["pid"]) == (w.docker.pid, w.cron.pid)
    assert line["sender"]["cgroup_id"] == cgroup_filter.of_path(w.docker_path)[0]
