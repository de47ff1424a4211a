"""The examples in README.md and in the module docstrings, executed as written.

Each example runs in this process with two stand-ins for the world outside: once a tracer is
attached, a thread sends SIGUSR1 (ignored) to this process and then ends the iteration with
tracer.stop() (an example that traces "for 5 seconds" or forever ends when we have checked it);
``time.sleep`` sends SIGUSR1 the same way, from this thread renamed "oracle" (the README's
comm filter), instead of waiting. The examples' output must show those signals.
"""

from __future__ import annotations

import ctypes
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

import sigscope
from sigscope import top, tracer
from sigscope.tracer import Tracer

ROOT = Path(__file__).resolve().parents[2]
SENT = 3
PR_SET_NAME, PR_GET_NAME = 15, 16
_libc = ctypes.CDLL(None, use_errno=True)


def code_blocks(text: str) -> list[str]:
    """Indented blocks (4 spaces, as in README.md and our docstrings) that use sigscope."""
    blocks, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
            continue
        if current:
            block = textwrap.dedent("\n".join(current)).strip()
            if block.startswith(("import sigscope", "from sigscope", "import time")):
                blocks.append(block)
        current = []
    return blocks


EXAMPLES = {
    "README.md#1": code_blocks((ROOT / "README.md").read_text())[0],
    "README.md#2": code_blocks((ROOT / "README.md").read_text())[1],
    "sigscope/__init__.py": code_blocks(sigscope.__doc__ or "")[0],
    "sigscope/tracer.py": code_blocks(tracer.__doc__ or "")[0],
    "sigscope/top.py": code_blocks(top.__doc__ or "")[0],
}


def test_every_example_is_found() -> None:
    assert len(code_blocks((ROOT / "README.md").read_text())) == 2
    for name, block in EXAMPLES.items():
        assert "sigscope" in block, name


def _send_ours() -> None:
    for _ in range(SENT):
        os.kill(os.getpid(), signal.SIGUSR1)


def _set_thread_name(name: bytes) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _thread_name() -> bytes:
    buffer = ctypes.create_string_buffer(16)
    _libc.prctl(PR_GET_NAME, buffer, 0, 0, 0)
    return buffer.value


@pytest.fixture
def world(monkeypatch):
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    senders: list[threading.Thread] = []
    real_start = Tracer.start

    def start(self: Tracer) -> Tracer:
        first = not self.started
        real_start(self)
        if first:
            def send_then_stop() -> None:
                _send_ours()
                self.stop()

            senders.append(threading.Thread(target=send_then_stop))
            senders[-1].start()
        return self

    def sleep(_seconds: float) -> None:
        name = _thread_name()
        _set_thread_name(b"oracle")
        try:
            _send_ours()
        finally:
            _set_thread_name(name)

    monkeypatch.setattr(Tracer, "start", start)
    monkeypatch.setattr(time, "sleep", sleep)
    yield
    for sender in senders:
        sender.join()
    signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_shows_our_signals(name: str, world, capsys) -> None:
    started = time.monotonic()
    exec(compile(EXAMPLES[name], name, "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    me = os.getpid()
    if "count(" in EXAMPLES[name]:
        # Counted in the kernel: one row, our three sends as "oracle".
        rows = [line for line in out.splitlines() if line.startswith("oracle")]
        assert rows and all(line.endswith(f" {SENT}") for line in rows), out
        assert any("SIGUSR1" in line or str(me) in line for line in rows), out
    else:
        ours = [line for line in out.splitlines() if str(me) in line and
                ("SIGUSR1" in line or "'sig': 10" in line)]
        assert len(ours) >= SENT, out
    assert time.monotonic() - started < 30  # ended by us, not by the example's duration
