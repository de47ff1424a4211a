"""`sigscope selftest`: the whole engine, end to end, on this machine.

Prints the kernel features found (bpf/features.py) and the paths chosen from them, then loads
the probes, attaches them to signal:signal_generate and the signal syscalls, sends this process
signals through kill(2) and tgkill(2), and checks each one comes back as a record — through the
ring buffer and through the perf buffer — and that --fate sees a handled signal's delivery.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TextIO

from sigscope.bpf import features
from sigscope.model.event import Event
from sigscope.tracer import Tracer, make_filters

FATE_TIMEOUT_S = 10.0


def _roundtrip(buffer: str) -> list[str]:
    """Send SIGUSR1 (ignored) by kill and tgkill; return the vias the tracer saw."""
    me = os.getpid()
    tracer = Tracer(make_filters(signals={signal.SIGUSR1}, pids=[me]), buffer=buffer,
                    buffer_size=1 << 20)
    seen: list[str] = []
    with tracer:
        os.kill(me, signal.SIGUSR1)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        tracer.stop()
        for event in tracer:
            if (isinstance(event, Event) and event.sender_pid == me and event.target_pid == me
                    and event.outcome == "ignored"):
                seen.append(event.via)
    return seen


def _fate_roundtrip() -> tuple[str | None, str | None]:
    """Send ourselves SIGUSR2 (handled) with --fate; return (its fate's effect, how the exit
    program knows a process died)."""
    from sigscope.fate import Fate

    me = os.getpid()
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    tracer = Tracer(make_filters(signals={signal.SIGUSR2}, pids=[me]), buffer_size=1 << 20,
                    fate=True)
    effect: str | None = None
    try:
        with tracer:
            tracer.start()
            os.kill(me, signal.SIGUSR2)  # the handler runs on return from this call
            deadline = time.monotonic() + FATE_TIMEOUT_S
            while effect is None and time.monotonic() < deadline:
                for item in tracer.poll(10):
                    if isinstance(item, Fate) and item.sig == signal.SIGUSR2:
                        effect = item.effect
            if effect is None:
                for item in tracer.close():
                    if isinstance(item, Fate) and item.sig == signal.SIGUSR2:
                        effect = item.effect
    finally:
        signal.signal(signal.SIGUSR2, previous)
    return effect, tracer.fate_exit_source


def describe_paths() -> list[str]:
    """The paths sigscope takes on this kernel, one line each (chosen from features)."""
    from sigscope.programs import context, entry_regs
    from sigscope.programs import fate as fate_probes
    from sigscope.programs import signal as probes
    from sigscope.programs.task import task_layout

    claim = probes.inflight_claim()
    lines = [
        "in-flight claim: " + ("cmpxchg on per-thread array slots (bpf_atomics)"
                               if claim == probes.CLAIM_CMPXCHG else
                               "hash map keyed by thread id, no atomics (no bpf_atomics)"),
        "attach: " + ("perf-event link" if features.has("perf_event_link")
                      else "ioctl PERF_EVENT_IOC_SET_BPF (no perf_event_link)"),
        "sender fields: " + ("task_struct via BTF (get_current_task_btf)"
                             if task_layout() is not None else "helper calls"),
        "syscall entry: " + ("read from the sender's saved user registers at signal_generate "
                             "and sys_exit (task_pt_regs): two probes per signal"
                             if entry_regs.allowed(task_layout(), claim) is not None else
                             "sys_enter tracepoints: three probes per signal (no task_pt_regs, "
                             "get_current_task_btf, bpf_atomics or pt_regs in BTF)"),
        "signal_generate: " + ("tp_btf, recipient read from its task_struct via BTF"
                               if probes.recipient_source_is_task() else
                               "tracefs tracepoint, recipient's process from /proc "
                               "(no BTF or no tp_btf)"),
        "container context: " + ("cgroup ids; pid-namespace ids and --cgroup/--container "
                                 "via BTF" if context.pid_layout() and context.cgroup_layout()
                                 else "cgroup ids; pid-namespace ids unknown and no "
                                 "--cgroup/--container (no BTF)"),
        "output: " + ("ring buffer" if features.has("ringbuf") else "perf buffer (no ringbuf)"),
        "skipped probe runs: " + ("counted (recursion_misses)" if features.has("recursion_misses")
                                  else "this kernel cannot count them (no recursion_misses)"),
    ]
    try:
        from sigscope.bpf.tracefs import event_format

        fmt = event_format("sched", "sched_process_exit")
        lines.append("fate exit: " + fate_probes.exit_source(fmt, fate_probes.exit_layout()))
    except OSError as err:
        lines.append(f"fate exit: unavailable ({err})")
    return lines


def write_features(out: TextIO) -> None:
    out.write(f"selftest: kernel {os.uname().release} {os.uname().machine}\n")
    out.write(f"selftest: {'feature':22} {'since':6} present\n")
    for name, since, present in features.table():
        out.write(f"selftest:   {name:22} {since or '-':6} {'yes' if present else 'no'}\n")
    for line in describe_paths():
        out.write(f"selftest: {line}\n")


def selftest(out: TextIO) -> int:
    from sigscope.bpf.privileges import check_privileges

    check_privileges()
    features.check_essentials()
    write_features(out)
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        buffers = ["ringbuf", "perf"] if features.has("ringbuf") else ["perf"]
        failures = 0
        for buffer in buffers:
            seen = _roundtrip(buffer)
            ok = seen == ["kill", "tgkill"]
            failures += not ok
            out.write(f"selftest: {buffer:7} buffer: sent SIGUSR1 by kill and tgkill, saw "
                      f"{', '.join(seen) or 'nothing'}: {'ok' if ok else 'FAILED'}\n")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    effect, source = _fate_roundtrip()
    ok = effect == "handled"
    failures += not ok
    out.write(f"selftest: fate: sent SIGUSR2 (handled), its fate: {effect or 'not seen'} "
              f"(exit: {source}): {'ok' if ok else 'FAILED'}\n")
    out.write("selftest: ok\n" if not failures else "selftest: FAILED\n")
    return 0 if not failures else 1
