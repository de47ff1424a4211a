"""The recipient as the kernel saw it (issue 11): target pid/tid/comm read from the receiving
task at signal_generate (tp_btf path), and -T matched in the kernel against that task's tgid or
tid. Real processes and threads, real signals; every test waits for the event it asserts on,
so a tracer that sees nothing fails. The tracefs fallback (no BTF) is run where it gives the
same answer; where it cannot (a thread gone before /proc is read, a kill() to a non-main
thread under -T), only the tp_btf path is asserted."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import threading
import time

import pytest
from helpers import Target, started

from sigscope.programs import signal as probes
from sigscope.programs.common import RingbufOutput
from sigscope.send import send_signal
from sigscope.tracer import trace

# Every test on both ways of learning a call (conftest.py entry_path).
pytestmark = pytest.mark.usefixtures("entry_path")

SIGUSR1, SIGUSR2, SIGTERM = 10, 12, 15
SIGEV_THREAD_ID = 4  # include/uapi/asm-generic/siginfo.h
CLOCK_MONOTONIC = 1
ME = os.getpid()

# Skips only through the feature table (tests/kernel_features.py, tools/kmatrix/kernels.json).
needs_tp_btf = pytest.mark.needs("btf_vmlinux", "tp_btf")


def tracer(path: str, **kw):
    t = trace(buffer_size=1 << 20, **kw)
    t.recipient_task = path == "tp_btf"
    return t


PATHS = [pytest.param("tp_btf", marks=needs_tp_btf), "tracepoint"]


@pytest.mark.parametrize("path", PATHS)
def test_generate_path_is_the_one_asked_for(path: str) -> None:
    cfg = probes.ProbeConfig(trace().filters, RingbufOutput(-1, -2), probes.MapFds(-1, -2, -3),
                             claim=probes.inflight_claim(), recipient_task=path == "tp_btf")
    assert probes.generate_path(cfg) == path


@needs_tp_btf
def test_selftest_names_the_tp_btf_generate_path() -> None:
    import sys

    from helpers import SRC
    run = subprocess.run([sys.executable, "-m", "sigscope", "selftest"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "signal_generate: tp_btf, recipient read from its task_struct via BTF" in run.stdout


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("via", ["kill", "tkill"])
def test_to_a_non_main_thread(path: str, via: str) -> None:
    with Target(threads=1) as t:
        thread = t.tids[0]
        collector = started(tracer(path, signals=[SIGUSR2], pids=[ME]))
        try:
            send_signal(via, SIGUSR2, pid=thread)
            got = collector.wait_count(lambda e: e.via == via and e.target_tid == thread)
        finally:
            collector.finish()
    assert [(e.target_pid, e.target_tid, e.target_comm) for e in got] == [
        (t.pid, thread, "sigscope-tgt")]
    # The tracefs fallback found the process in /proc after the event, and says so (JSON too).
    source = "kernel" if path == "tp_btf" else "proc"
    assert [(e.target_source, e.to_dict()["target"]["source"]) for e in got] == [
        (source, source)]


def _worker(ready: threading.Event, tids: list, received: list, sig: int) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
    tids.append(threading.get_native_id())
    ready.set()
    got = signal.sigtimedwait([sig], 30)
    received.append(got.si_signo if got else None)


@pytest.mark.parametrize("path", PATHS)
def test_sigev_thread_id_timer_to_a_worker(path: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [SIGUSR2])  # only the worker may take it
    try:
        ready, tids, received = threading.Event(), [], []
        worker = threading.Thread(target=_worker, args=(ready, tids, received, SIGUSR2))
        worker.start()
        assert ready.wait(30)
        collector = started(tracer(path, signals=[SIGUSR2], target_ids=[tids[0]]))
        try:
            try:
                rt = ctypes.CDLL("librt.so.1", use_errno=True)
            except OSError:
                rt = ctypes.CDLL(None, use_errno=True)
            # struct sigevent: sigval (8), signo, notify, then _sigev_un whose first int is
            # the thread id (_tid) for SIGEV_THREAD_ID; 64 bytes in all.
            sigevent = ctypes.create_string_buffer(64)
            struct.pack_into("=Qiii", sigevent, 0, 0, SIGUSR2, SIGEV_THREAD_ID, tids[0])
            timer = ctypes.c_void_p()
            assert rt.timer_create(CLOCK_MONOTONIC, sigevent, ctypes.byref(timer)) == 0
            spec = (ctypes.c_long * 4)(0, 0, 0, 2_000_000)  # one shot in 2 ms
            assert rt.timer_settime(timer, 0, spec, None) == 0
            worker.join(30)
            rt.timer_delete(timer)
            got = collector.wait_count(lambda e: e.sig == SIGUSR2)
        finally:
            collector.finish()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [SIGUSR2])
    assert received == [SIGUSR2]
    assert [(e.via, e.target_tid) for e in got] == [("kernel", tids[0])]
    # The tracefs path looks the tgid up in /proc when decoding, after the worker is gone:
    # best effort, unknown then (never a wrong pid).
    assert got[0].target_pid == ME if path == "tp_btf" else got[0].target_pid in (ME, None)


@needs_tp_btf
def test_thread_gone_before_decoding_keeps_its_process() -> None:
    # tkill names only the thread; the thread exits before the tracer decodes the record,
    # so /proc cannot tell its process any more: only the task read at generation can.
    signal.pthread_sigmask(signal.SIG_BLOCK, [SIGUSR1])
    try:
        ready, tids, received = threading.Event(), [], []
        worker = threading.Thread(target=_worker, args=(ready, tids, received, SIGUSR1))
        worker.start()
        assert ready.wait(30)
        collector = started(tracer("tp_btf", signals=[SIGUSR1], pids=[ME]))
        try:
            send_signal("tkill", SIGUSR1, pid=tids[0])
            worker.join(30)
            # join() returns when the thread's Python state is released, a moment before the
            # kernel task is reaped: wait (bounded) until /proc no longer has it.
            deadline = time.monotonic() + 30
            while os.path.exists(f"/proc/{ME}/task/{tids[0]}"):
                assert time.monotonic() < deadline, "the worker thread never exited"
                time.sleep(0.001)
            got = collector.wait_count(lambda e: e.via == "tkill")
        finally:
            collector.finish()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [SIGUSR1])
    assert received == [SIGUSR1]
    assert [(e.target_pid, e.target_tid) for e in got] == [(ME, tids[0])]


def _send(via: str, t: Target, to_thread: bool) -> None:
    tid = t.tids[0]
    if via in ("tgkill", "rt_tgsigqueueinfo"):
        send_signal(via, SIGUSR1, pid=t.pid, tid=tid if to_thread else t.pid)
    elif via == "pidfd_send_signal":
        send_signal(via, SIGUSR1, pid=t.pid)  # a pidfd names a process (the main thread)
    else:
        send_signal(via, SIGUSR1, pid=tid if to_thread else t.pid)


VIAS = ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"]


@needs_tp_btf
@pytest.mark.parametrize("via", VIAS)
def test_target_filter_by_process_and_by_thread(via: str) -> None:
    with Target(threads=1) as kept, Target(threads=1) as dropped:
        thread = kept.tids[0]
        by_proc = started(tracer("tp_btf", target_ids=[kept.pid], pids=[ME]))
        by_thread = started(tracer("tp_btf", target_ids=[thread], pids=[ME]))
        try:
            _send(via, dropped, to_thread=True)
            _send(via, kept, to_thread=True)
            _send(via, kept, to_thread=False)
            by_proc.wait_count(lambda e: e.via == via, 2)
            if via != "pidfd_send_signal":
                by_thread.wait_count(lambda e: e.via == via)
        finally:
            proc_events = by_proc.finish()
            thread_events = by_thread.finish()
    main_tid = thread if via != "pidfd_send_signal" else kept.pid
    assert sorted((e.target_pid, e.target_tid) for e in proc_events) == sorted(
        [(kept.pid, main_tid), (kept.pid, kept.pid)])
    if via == "pidfd_send_signal":
        assert thread_events == []
    else:
        assert [(e.target_pid, e.target_tid) for e in thread_events] == [(kept.pid, thread)]


@pytest.mark.parametrize("path", PATHS)
def test_target_filter_tgkill_to_a_thread_of_the_process(path: str) -> None:
    with Target(threads=1) as kept:
        collector = started(tracer(path, target_ids=[kept.pid], pids=[ME]))
        try:
            send_signal("tgkill", SIGUSR1, pid=kept.pid, tid=kept.tids[0])
            got = collector.wait_count(lambda e: e.via == "tgkill")
        finally:
            collector.finish()
    assert [(e.target_pid, e.target_tid) for e in got] == [(kept.pid, kept.tids[0])]


def _host_pid_of(ns_init: int, ns_pid: int) -> int:
    """The host pid of the child of ns_init whose pid in ns_init's namespace is ns_pid."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        nspid = status.get("NSpid", "").split()
        if int(status.get("PPid", "0")) == ns_init and nspid[-1:] == [str(ns_pid)]:
            return int(entry)
    raise AssertionError(f"no child {ns_pid} of {ns_init}")


@needs_tp_btf
def test_target_filter_in_a_pid_namespace() -> None:
    # sh is pid 1 in the new namespace, its sleep pid 2: `-T 2` must not match the SIGTERM
    # to the sleep (whose host pid is something else), `-T <host pid>` must.
    child = subprocess.Popen(
        ["unshare", "-pf", "--mount-proc", "sh", "-c", "sleep 30 & echo $!; read x; kill $!"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        ns_pid = int(child.stdout.readline())
        assert ns_pid == 2
        shells = [int(p) for p in open(f"/proc/{child.pid}/task/{child.pid}/children").read()
                  .split()]
        assert len(shells) == 1
        sleep_host = _host_pid_of(shells[0], ns_pid)
        local = started(tracer("tp_btf", signals=[SIGTERM], target_ids=[ns_pid]))
        host = started(tracer("tp_btf", signals=[SIGTERM], target_ids=[sleep_host]))
        try:
            child.stdin.write("\n")
            child.stdin.flush()
            got = host.wait_count(lambda e: e.sender_pid == shells[0])
        finally:
            local_events = local.finish()
            host.finish()
        assert child.wait(30) == 0
    finally:
        child.kill()
        child.wait()
    assert [(e.via, e.target_pid, e.arg_pid) for e in got] == [("kill", sleep_host, ns_pid)]
    assert [e for e in local_events if e.sender_pid == shells[0]] == []


@needs_tp_btf
@pytest.mark.parametrize("via", ["kill", "tkill"])
def test_top_target_filter_by_process_counts_a_thread_recipient(via: str) -> None:
    from sigscope import top

    with Target(threads=1) as kept:
        with top.count(pids=[ME], target_ids=[kept.pid], signals="USR1") as counter:
            for _ in range(3):
                send_signal(via, SIGUSR1, pid=kept.tids[0])
            snapshot = counter.read()
    # (Rows may differ in outcome: a SIGUSR1 still pending is not queued twice.)
    assert {(k.target_pid, k.via) for k in snapshot.rows} == {(kept.pid, via)}
    assert sum(snapshot.rows.values()) == 3


@needs_tp_btf
def test_target_cgroup_id_is_the_recipients() -> None:
    # The cgroup v2 id is the inode number of the cgroup's directory in cgroupfs.
    with Target() as t:
        rel = open(f"/proc/{t.pid}/cgroup").read().split("0::", 1)[1].split("\n")[0]
        want = os.stat("/sys/fs/cgroup" + rel).st_ino
        collector = started(tracer("tp_btf", signals=[SIGUSR1], target_ids=[t.pid]))
        try:
            send_signal("kill", SIGUSR1, pid=t.pid)
            got = collector.wait_count(lambda e: e.via == "kill")
        finally:
            collector.finish()
    assert [e.target_cgroup for e in got] == [want]
    assert got[0].to_dict()["target"]["cgroup_id"] == want
