"""The real `sigscope trace` command in a subprocess: the `Tracing` ready line on stderr, JSON
Lines with the documented schema (and nothing else on stdout), lost records reported, clean exit
on SIGINT, SIGTERM and --duration with a summary, and no BPF program left behind."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading

import pytest
from helpers import SRC, TARGET_COMM, Target, bpf_prog_ids_of, wait_unloaded

from sigscope.bpf import features
from sigscope.containers import cgroup2_mount, cgroup_id_of
from sigscope.model.event import ORIGINS, OUTCOMES
from sigscope.model.record import VIA_NAMES
from sigscope.programs import context
from sigscope.programs import signal as probes
from sigscope.send import SendError, send_signal

SIGUSR1, SIGUSR2 = 10, 12
TIMEOUT = 60.0  # a bound, not a wait: generous for qemu (TCG) guests of the kernel matrix
SUMMARY = re.compile(r"^sigscope: (\d+) records?, (\d+) lost$")  # "1 record"
SKIPPED_NOTE = "sigscope: this kernel cannot count the probe runs it skipped"


def without_skipped_runs_note(err: list[str]) -> list[str]:
    """stderr lines without the note a kernel lacking recursion_misses gets once (checked)."""
    notes = [line for line in err if line.startswith(SKIPPED_NOTE)]
    assert len(notes) <= (0 if features.has("recursion_misses") else 1), err
    return [line for line in err if not line.startswith(SKIPPED_NOTE)]


class CliTrace:
    """`python3 -m sigscope.cli.main trace ARGS`, started and ready (its `Tracing` line read)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": SRC}
        env.pop("SIGSCOPE_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "sigscope", "trace", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], TIMEOUT)
        if not ready:
            self.proc.kill()
            raise AssertionError("no Tracing line on stderr")
        self.tracing_line = self.proc.stderr.readline()
        assert self.tracing_line.startswith("Tracing"), self.tracing_line + self.proc.stderr.read()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_until(self, predicate, what: str) -> list[str]:
        """Wait until predicate(stdout lines so far) holds."""
        with self._new_line:
            if not self._new_line.wait_for(lambda: predicate(self.lines)
                                           or not self._reader.is_alive(), TIMEOUT) \
                    or not predicate(self.lines):
                raise AssertionError(f"expected {what}, got {self.lines}")
        return self.lines

    def wait_lines(self, count: int) -> list[str]:
        return self.wait_until(lambda lines: len(lines) >= count, f"{count} lines")

    def finish(self, stop: int | None = signal.SIGINT) -> tuple[int, list[str], list[str]]:
        """Stop it (or let --duration do so); return (exit status, stdout lines, stderr lines
        after the Tracing line)."""
        if stop is not None:
            self.proc.send_signal(stop)
        try:
            status = self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(TIMEOUT)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().splitlines()
        return status, self.lines, without_skipped_runs_note(err)


@pytest.fixture
def target():
    with Target() as child:
        yield child


def check_schema(obj: dict) -> None:
    """Keys and types of one `"type": "signal"` object, as issue 3 documents them."""
    assert set(obj) >= {"type", "time", "ktime_ns", "sig", "signal", "via", "origin", "sender",
                        "target", "args", "code", "code_name", "result", "error", "outcome"}
    assert obj["type"] == "signal"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", obj["time"])
    assert isinstance(obj["ktime_ns"], int) and isinstance(obj["sig"], int)
    assert isinstance(obj["signal"], str) and obj["via"] in VIA_NAMES
    assert set(obj["sender"]) == {"pid", "tid", "comm", "uid", "cgroup_id", "ns_pid", "ns_tid",
                                  "container"}
    assert all(isinstance(obj["sender"][k], int) for k in ("pid", "tid", "uid"))
    for key in ("cgroup_id", "ns_pid", "ns_tid"):  # None: the kernel did not say
        assert obj["sender"][key] is None or isinstance(obj["sender"][key], int)
    assert isinstance(obj["sender"]["comm"], str)
    assert set(obj["target"]) == {"pid", "tid", "comm", "cgroup_id", "ns_pid", "ns_tid",
                                  "source", "container"}
    assert obj["target"]["source"] in (None, "kernel", "args", "proc", "tid")
    assert set(obj["args"]) == {"pid", "tid", "pidfd"}
    for side in (obj["sender"], obj["target"]):  # resolved from cgroup_id, or null
        container = side["container"]
        assert container is None or (container["cgroup_id"] == side["cgroup_id"]
                                     and container["cgroup_path"].startswith("/"))
    target = {key: value for key, value in obj["target"].items() if key != "container"}
    for value in (*target.values(), *obj["args"].values(), obj["code"], obj["result"]):
        assert value is None or isinstance(value, (int, str))
    assert obj["target"]["comm"] is None or isinstance(obj["target"]["comm"], str)
    assert obj["code_name"] is None or isinstance(obj["code_name"], str)
    assert obj["outcome"] is None or obj["outcome"] in OUTCOMES
    if obj["via"] == "kernel":
        assert obj["origin"] in ORIGINS
        assert (obj["result"], obj["error"]) == (None, None)
    else:
        assert obj["origin"] is None and isinstance(obj["result"], int)
        assert (obj["error"] is None) == (obj["result"] >= 0)


def test_json_lines(target: Target) -> None:
    cli = CliTrace("-j", "-T", str(target.pid))
    assert "ringbuf" in cli.tracing_line or "perf" in cli.tracing_line
    send_signal("kill", SIGUSR1, pid=target.pid)
    send_signal("tgkill", SIGUSR2, pid=target.pid, tid=target.pid)
    send_signal("rt_sigqueueinfo", 40, pid=target.pid, value=5)
    send_signal("pidfd_send_signal", SIGUSR1, pid=target.pid)
    with pytest.raises(SendError):
        send_signal("kill", 99, pid=target.pid)
    assert target.command("pipe") == "ok"
    cli.wait_lines(6)
    status, out, err = cli.finish(signal.SIGINT)
    assert status == 0
    objects = [json.loads(line) for line in out]  # stdout holds nothing but JSON
    assert all(line.endswith("\n") for line in out)
    for obj in objects:
        check_schema(obj)
    assert [(o["via"], o["sig"]) for o in objects] == [
        ("kill", SIGUSR1), ("tgkill", SIGUSR2), ("rt_sigqueueinfo", 40),
        ("pidfd_send_signal", SIGUSR1), ("kill", 99), ("kernel", 13)]
    # The recipient's own pid-namespace ids (the initial one: its host ids), read from its task
    # where the tp_btf generate runs with BTF; unknown (null) on the tracefs fallback.
    ns_id = target.pid if probes.recipient_source_is_task() and context.pid_layout() else None
    assert objects[1]["target"] == {"pid": target.pid, "tid": target.pid, "comm": TARGET_COMM,
                                    "cgroup_id": objects[1]["target"]["cgroup_id"],
                                    "ns_pid": ns_id, "ns_tid": ns_id,
                                    "source": _tgkill_target_source(),
                                    "container": objects[1]["target"]["container"]}
    assert objects[1]["args"] == {"pid": target.pid, "tid": target.pid, "pidfd": None}
    mount = cgroup2_mount()
    if mount is not None:  # the sender's (this test's) cgroup v2 directory, by its handle
        (own,) = [line[3:] for line in open("/proc/self/cgroup").read().splitlines()
                  if line.startswith("0::")]
        assert objects[1]["sender"]["cgroup_id"] == cgroup_id_of(
            mount.mount_point + own.rstrip("/"))
        # ... and its path, resolved from that id (docs/CONTAINERS.md)
        assert objects[1]["sender"]["container"]["cgroup_path"] == own
    assert (objects[1]["code_name"], objects[1]["outcome"]) == ("SI_TKILL", "delivered")
    assert (objects[4]["result"], objects[4]["error"], objects[4]["outcome"]) == (
        -22, "EINVAL", None)
    assert (objects[5]["origin"], objects[5]["outcome"]) == ("pipe", "ignored")
    assert objects[2]["signal"] == f"SIGRTMIN+{40 - signal.SIGRTMIN}"  # as the C library says
    assert err == ["sigscope: 6 records, 0 lost"]


def test_a_send_that_reached_nobody_shows_what_it_addressed(target: Target) -> None:
    """kill(-99999, 0) fails, kill(-1, 0) and kill(self, 0) reach nobody (signal 0): no
    recipient, so TPID shows the argument in parentheses; JSON: target null, args as passed."""
    text = CliTrace("-p", str(target.pid), "-s", "0")
    lines = CliTrace("-j", "-p", str(target.pid), "-s", "0")
    assert target.command("kill -99999 0") == "err ESRCH"
    assert target.command("kill -1 0") == "ok"
    assert target.command(f"kill {target.pid} 0") == "ok"
    text.wait_lines(4)
    lines.wait_lines(3)
    status, out, _err = text.finish(signal.SIGINT)
    assert status == 0
    header, *rows = out
    cells = [row[header.index("PID") + 3:].split() for row in rows]
    assert [(c[3], c[4], c[5], c[7]) for c in cells] == [
        ("0", "(-99999)", "-", "-ESRCH"), ("0", "(-1)", "-", "0"),
        ("0", f"({target.pid})", "-", "0")]
    for row in rows:
        assert row.index("kill") == header.index("VIA"), row
    status, out, _err = lines.finish(signal.SIGINT)
    assert status == 0
    objects = [json.loads(line) for line in out]
    assert [o["args"]["pid"] for o in objects] == [-99999, -1, target.pid]
    assert [o["target"]["pid"] for o in objects[:2]] == [None, None]  # no recipient


def test_lost_records_are_reported_and_add_up(target: Target) -> None:
    sent = 300
    cli = CliTrace("-j", "--buffer", "ringbuf", "--buffer-size", "4K", "-s", "0",
                   "-T", str(target.pid))
    cli.proc.send_signal(signal.SIGSTOP)  # nobody reads: the 4 KiB ring fills up
    try:
        for _ in range(sent):
            os.kill(target.pid, 0)
    finally:
        cli.proc.send_signal(signal.SIGCONT)
    cli.wait_until(lambda lines: any('"lost"' in line for line in lines), "a lost line")
    status, out, err = cli.finish(signal.SIGTERM)
    assert status == 0
    objects = [json.loads(line) for line in out]
    signals = [o for o in objects if o["type"] == "signal"]
    lost = [o for o in objects if o["type"] == "lost"]
    assert lost and all(set(o) == {"type", "time", "count"} for o in lost)
    assert 0 < len(signals) < sent
    assert len(signals) + sum(o["count"] for o in lost) == sent
    (summary,) = err
    assert SUMMARY.match(summary).groups() == (str(len(signals)), str(sent - len(signals)))


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "duration"])
def test_clean_exit_leaves_nothing_loaded(target: Target, how: str) -> None:
    extra = ["-d", "1"] if how == "duration" else []
    cli = CliTrace("-T", str(target.pid), "-t", *extra)
    prog_ids = bpf_prog_ids_of(cli.proc.pid)
    # signal_generate and six exits (two-probe path), or six enters, one exit for all six and
    # signal_generate (programs/entry_regs.py).
    assert len(prog_ids) >= (7 if _two_probes() else 8)
    send_signal("tkill", SIGUSR1, tid=target.pid)
    lines = cli.wait_lines(2)
    status, out, err = cli.finish(None if how == "duration" else getattr(signal, how))
    assert status == 0
    assert out[0].split() == ["TIME", "PID", "TID", "COMM", "VIA", "SIG", "TPID", "TTID",
                              "TCOMM", "RESULT", "OUTCOME"]
    row = lines[1].split()
    assert row[4:] == ["tkill", "SIGUSR1", str(target.pid), str(target.pid), TARGET_COMM, "0",
                       "delivered"]
    float(row[0])  # -t: relative seconds
    (summary,) = err
    assert SUMMARY.match(summary).groups() == ("1", "0")
    assert wait_unloaded(prog_ids) == set()


def _tgkill_target_source() -> str:
    """A tgkill's target process: read from the recipient's task (tp_btf), or its argument."""
    from sigscope.programs import signal as probes

    return "kernel" if probes.recipient_source_is_task() else "args"


def _two_probes() -> bool:
    """Whether this kernel runs the two-probe entry path (programs/entry_regs.py)."""
    from sigscope.programs import entry_regs
    from sigscope.programs import signal as probes
    from sigscope.programs.task import task_layout

    return entry_regs.allowed(task_layout(), probes.inflight_claim()) is not None


def test_ebpf_prints_the_programs_without_loading() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-m", "sigscope", "trace", "--ebpf", "-s", "USR1"],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("; --- ")]
    assert "; --- signal_generate" in headers
    if _two_probes():  # no entry programs; each exit builds its own call's record
        assert "; --- sys_exit_kill" in headers and "; --- sys_exit_pidfd_send_signal" in headers
        assert not any("sys_enter" in h for h in headers)
    else:  # one exit program serves every sys_exit tracepoint; each entry has its own
        assert any("sys_exit_kill" in h and "sys_exit_pidfd_send_signal" in h for h in headers)
        assert "; --- sys_enter_pidfd_send_signal" in headers
    assert "Tracing" not in done.stderr
