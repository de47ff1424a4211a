"""Command-line parsing and error reporting (nothing is loaded: no root needed)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sigscope.cli import main as cli
from sigscope.model.record import VIA_NAMES

SRC = str(Path(__file__).resolve().parents[2] / "src")


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["trace", *argv])


def filters(*argv: str):
    return cli.filters_from_args(parse(*argv))


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_defaults_trace_everything() -> None:
    args = parse()
    f = cli.filters_from_args(args)
    assert (f.sender_pids, f.target_ids, f.signals, f.comm, f.failed_only) == (
        frozenset(), frozenset(), None, None, False)
    assert f.vias == frozenset(VIA_NAMES) and f.include_kernel
    assert (args.duration, args.json, args.timestamp, args.buffer, args.buffer_size,
            args.ebpf) == (None, False, False, "auto", 16 << 20, False)


@pytest.mark.parametrize(("argv", "expected"), [
    (["-p", "42"], {"sender_pids": frozenset({42})}),
    (["--pid", "42,43"], {"sender_pids": frozenset({42, 43})}),
    (["-T", "7"], {"target_ids": frozenset({7})}),
    (["--tpid", "7,0x10"], {"target_ids": frozenset({7, 16})}),
    (["-s", "USR1"], {"signals": frozenset({10})}),
    (["--signal", "SIGUSR2,sigrtmin+3,9,0"], {"signals": frozenset({12, 37, 9, 0})}),  # glibc
    (["-e", "CHLD"], {"signals": None, "excluded_signals": frozenset({17})}),
    (["--exclude-signal", "CHLD,WINCH"],
     {"signals": None, "excluded_signals": frozenset({17, 28})}),
    (["-s", "USR1,USR2", "-e", "USR2"], {"signals": frozenset({10})}),
    (["-c", "bash"], {"comm": "bash"}),
    (["--comm", "oracle"], {"comm": "oracle"}),
    (["--via", "tgkill,kernel"], {"vias": frozenset({"tgkill", "kernel"})}),
    (["--via", "kill"], {"vias": frozenset({"kill"}), "include_kernel": False}),
    (["-x"], {"failed_only": True, "include_kernel": False}),
    (["--failed"], {"failed_only": True}),
    (["-k"], {"vias": frozenset(VIA_NAMES) - {"kernel"}, "include_kernel": False}),
    (["--kill-only"], {"include_kernel": False}),
])
def test_filter_options(argv: list[str], expected: dict) -> None:
    f = filters(*argv)
    for name, value in expected.items():
        assert getattr(f, name) == value, name


@pytest.mark.parametrize(("argv", "name", "value"), [
    (["-d", "1.5"], "duration", 1.5),
    (["--duration", "10"], "duration", 10.0),
    (["-t"], "timestamp", True),
    (["--timestamp"], "timestamp", True),
    (["-j"], "json", True),
    (["--json"], "json", True),
    (["--buffer", "perf"], "buffer", "perf"),
    (["--buffer", "ringbuf"], "buffer", "ringbuf"),
    (["--buffer-size", "1M"], "buffer_size", 1 << 20),
    (["--buffer-size", "512K"], "buffer_size", 512 << 10),
    (["--buffer-size", "8192"], "buffer_size", 8192),
    (["--ebpf"], "ebpf", True),
    (["--fate"], "follow_signalfd", True),
    (["--fate", "--no-signalfd"], "follow_signalfd", False),
])
def test_other_trace_options(argv: list[str], name: str, value: object) -> None:
    assert getattr(parse(*argv), name) == value


def test_send_options() -> None:
    args = cli.build_parser().parse_args(
        ["send", "--via", "rt_tgsigqueueinfo", "--tid", "12", "--value", "0x10", "RTMIN+1", "11"])
    assert (args.command, args.via, args.tid, args.value, args.signal, args.pid) == (
        "send", "rt_tgsigqueueinfo", 12, 16, "RTMIN+1", 11)


@pytest.mark.parametrize("argv", [
    ["trace", "-s", "BOGUS"],
    ["-s", "BOGUS"],
    ["trace", "-e", "SIGFOO"],
    ["trace", "-s", "99"],
    ["trace", "-s", "RTMIN+40"],
    ["trace", "-s", ","],
])
def test_bad_signal_is_one_line_listing_valid_forms(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.count("\n") == 1
    assert "SIGUSR1" in err and "SIGRTMIN+N" in err and "1-64" in err


@pytest.mark.parametrize(("argv", "needle"), [
    (["trace", "-p", "abc"], "not a number"),
    (["trace", "-p", "0"], "must be positive"),
    (["trace", "-p", "-5"], "-p"),
    (["trace", "-T", "x"], "not a number"),
    (["trace", "--via", "bogus"], "kill, tkill, tgkill"),
    (["trace", "--via", "kill,nope"], "nope"),
    (["trace", "-d", "0"], "must be positive"),
    (["trace", "-d", "soon"], "not a number"),
    (["trace", "--buffer-size", "1K"], "at least 4K"),
    (["trace", "--buffer-size", "lots"], "not a size"),
    (["trace", "--buffer", "pipe"], "invalid choice"),
    (["trace", "--no-such-option"], "unrecognized"),
    (["trace", "-c", ""], "--comm"),
    (["trace", "-p", ",".join(str(i) for i in range(1, 30))], "at most"),
    (["send", "--via", "bogus", "USR1", "1"], "invalid choice"),
    (["send", "USR1"], "needs a target PID"),
    (["send", "--via", "tgkill", "USR1", "1"], "needs --tid"),
    (["send", "NOPE", "1"], "unknown signal"),
])
def test_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.count("\n") == 1, err
    assert needle in err


@pytest.mark.parametrize("argv", [["--help"], ["trace", "--help"], ["-h"]])
def test_help_has_examples(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "sigscope trace -s USR2" in out


def test_trace_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["trace", "--help"])
    out = capsys.readouterr().out
    for option in ("--pid", "--tpid", "--signal", "--exclude-signal", "--comm", "--via",
                   "--failed", "--kill-only", "--duration", "--timestamp", "--json",
                   "--buffer-size"):
        assert option in out


def test_send_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["send", "--help"])
    assert "sigscope send --via tgkill --tid" in capsys.readouterr().out


def test_no_subcommand_means_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "run_trace", lambda args: seen.append(args) or 0)
    assert cli.main([]) == 0
    assert cli.main(["-j", "-s", "USR1"]) == 0
    assert [a.command for a in seen] == ["trace", "trace"]
    assert seen[1].json and seen[1].signal == ["USR1"]


def test_unexpected_errors_are_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.delenv("SIGSCOPE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "run_trace", broken)
    code, out, err = run_main(capsys, "trace")
    assert code == cli.EXIT_ERROR
    assert err == "sigscope: error: [Errno 5] Input/output error\n"


def _run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("SIGSCOPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "sigscope", *argv], capture_output=True,
                          text=True, env=env, timeout=30)


@pytest.mark.parametrize(("argv", "status"), [
    (["trace", "-s", "NOPE"], 2),
    (["-s", "NOPE"], 2),
    (["trace", "-p", "abc"], 2),
    (["trace", "--via", "bogus"], 2),
    (["send", "--via", "kill", "USR1", "999999999"], 1),  # beyond pid_max: ESRCH
])
def test_subprocess_errors_have_no_traceback(argv: list[str], status: int) -> None:
    done = _run_cli(*argv)
    assert done.returncode == status
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sigscope")


def test_subprocess_send_error_names_the_errno() -> None:
    done = _run_cli("send", "USR1", "999999999")
    assert "ESRCH" in done.stderr


def test_version() -> None:
    done = _run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("sigscope ")
