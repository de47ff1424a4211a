"""`sigscope selftest`: the whole engine, end to end, on this machine.

Loads the probes, attaches them to signal:signal_generate and the signal syscalls, sends this
process signals through kill(2) and tgkill(2), and checks each one comes back as a record —
through the ring buffer and through the perf buffer.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TextIO

from sigscope.bpf import kernel
from sigscope.model.event import Event
from sigscope.tracer import Tracer, make_filters


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


def selftest(out: TextIO) -> int:
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        buffers = ["ringbuf", "perf"] if kernel.has_ringbuf() else ["perf"]
        failures = 0
        for buffer in buffers:
            seen = _roundtrip(buffer)
            ok = seen == ["kill", "tgkill"]
            failures += not ok
            out.write(f"selftest: {buffer:7} buffer: sent SIGUSR1 by kill and tgkill, saw "
                      f"{', '.join(seen) or 'nothing'}: {'ok' if ok else 'FAILED'}\n")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    out.write("selftest: ok\n" if not failures else "selftest: FAILED\n")
    return 0 if not failures else 1
