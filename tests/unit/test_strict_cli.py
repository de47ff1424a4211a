"""Bad input is one line and the exit status of its class; nothing matches-nothing silently;
the error hierarchy of sigscope.errors. Nothing is loaded: no root needed."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sigscope import errors, top
from sigscope.bpf.asm import AsmError
from sigscope.bpf.btf_scan import BtfScanError
from sigscope.bpf.privileges import PrivilegeError
from sigscope.bpf.program import VerifierError
from sigscope.bpf.readers.ringbuf import ReaderError
from sigscope.bpf.syscall import BPFError
from sigscope.bpf.tracefs import TracefsError
from sigscope.cli import main as cli
from sigscope.model.filters import FilterError
from sigscope.model.signals import SignalSpecError
from sigscope.outputs.prometheus import ExporterError
from sigscope.send import SendError
from sigscope.tracer import TraceError, make_filters, trace

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Every malformed or contradictory command line of issue 13 (and a few more): exit 2, one line.
BAD = [
    (["trace", "--via", ","], "--via: empty list"),
    (["trace", "--via", "kernel", "-k"], "-k/--kill-only leaves out 'kernel'"),
    (["trace", "--via", "kernel", "-x"], "-x/--failed keeps failed sends only"),
    (["trace", "-s", "USR1", "-e", "USR1"], "leaves out every signal of -s/--signal"),
    (["trace", "-s", "USR1,USR2", "-e", "USR2", "-e", "USR1"], "leaves out every signal"),
    (["trace", "-s", ""], "empty signal list"),
    (["trace", "-e", ""], "empty signal list"),
    (["trace", "-p", ","], "-p/--pid: empty list"),
    (["trace", "-T", ","], "-T/--tpid: empty list"),
    (["trace", "-s", ","], "empty signal list"),
    (["trace", "-c", "a", "-c", "b"], "-c/--comm: given 2 different names"),
    (["trace", "-d", "nan"], "finite"),
    (["trace", "-d", "inf"], "finite"),
    (["trace", "--duration=-inf"], "finite"),
    (["trace", "-d", "1e-9"], "between 0.001"),
    (["trace", "-d", "1e300"], "between 0.001"),
    (["top", "-i", "nan"], "finite"),
    (["top", "-i", "inf"], "finite"),
    (["top", "-i", "1e-9"], "between 0.1"),
    (["top", "-i", "0"], "must be positive"),
    (["top", "-i", "1e9"], "between 0.1 and 86400"),
    (["trace", "-p", "2147483648"], "no process or thread id is above 4194304"),
    (["trace", "-T", "4194305"], "above 4194304"),
    (["trace", "--buffer-size", "64G"], "at most 1G"),
    (["send", "--value", "abc", "USR1", "1"], "--value: not an integer: 'abc'"),
    (["send", "--value", str(1 << 64), "--via", "rt_sigqueueinfo", "USR1", "1"], "64 bits"),
    (["send", "--value", "3", "USR1", "1"], "--via kill carries no value"),
    (["send", "--via", "tkill", "--tid", "5", "--value", "3", "USR1"], "carries no value"),
    (["send", "--via", "tgkill", "--tid", "5", "--value", "3", "USR1", "5"], "carries no value"),
    (["send", "USR1", "4294967296"], "not a pid_t"),
    # kill(2), rt_sigqueueinfo(2) and pidfd_send_signal(2) take no thread: a --tid must not be
    # dropped silently (the signal would go to the whole process).
    (["send", "--tid", "5", "USR1", "4194303"],
     "--via kill takes no thread: --tid needs --via tkill"),
    (["send", "--via", "rt_sigqueueinfo", "--tid", "5", "USR1", "4194303"], "takes no thread"),
    (["send", "--via", "pidfd_send_signal", "--tid", "5", "USR1", "4194303"], "takes no thread"),
    (["tarce"], "unknown command 'tarce' (choose from trace, top, send, selftest); did you "
                "mean 'trace'?"),
    (["bogus", "-s", "USR1"], "unknown command 'bogus'"),
    (["top", "--labels", "via"], "--labels needs --prometheus"),
    (["top", "--prometheus", ":1", "--labels", "pod"], "unknown label 'pod'"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_command_lines_are_one_line_exit_2(capsys, argv, needle) -> None:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == errors.EXIT_USAGE, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sigscope"), err
    assert needle in err, err
    assert "internal error" not in err and "Traceback" not in err


# A few of them as the real program (python -m sigscope): no traceback anywhere.
@pytest.mark.parametrize("argv", [
    ["trace", "--via", "kernel", "-k"], ["top", "-i", "nan"], ["tarce"],
    ["send", "--value", "abc", "USR1", "1"], ["trace", "-p", "2147483648"],
])
def test_real_program_bad_input_has_no_traceback(argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("SIGSCOPE_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "sigscope", *argv], capture_output=True,
                          text=True, env=env, timeout=30)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_closed_stdout_is_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-m", "sigscope", "trace", "-s", "USR1"],
                          stderr=subprocess.PIPE, text=True, env=env, timeout=30,
                          preexec_fn=lambda: os.close(1))  # `sigscope trace >&-`
    assert done.returncode == 2
    assert done.stderr == ("sigscope: standard output is closed: redirect it, e.g. to "
                           "/dev/null or a file\n")


# --- repeated flags add up --------------------------------------------------------------------

def _filters(*argv: str):
    return cli.filters_from_args(cli.build_parser().parse_args(["trace", *argv]))


@pytest.mark.parametrize(("argv", "name", "value"), [
    (["-T", "1", "-T", "2"], "target_ids", frozenset({1, 2})),
    (["-T", "1,2", "-T", "3,"], "target_ids", frozenset({1, 2, 3})),
    (["-p", "4", "--pid", "5"], "sender_pids", frozenset({4, 5})),
    (["-s", "USR1", "-s", "USR2"], "signals", frozenset({10, 12})),
    (["-e", "USR1", "-e", "USR2"], "excluded_signals", frozenset({10, 12})),
    (["--via", "kill", "--via", "tgkill"], "vias", frozenset({"kill", "tgkill"})),
    (["-c", "same", "-c", "same"], "comm", "same"),
])
def test_repeated_filter_flags_add_up(argv, name, value) -> None:
    assert getattr(_filters(*argv), name) == value


# --- the API speaks its own words -------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vias": []}, "vias= is empty"),
    ({"vias": ["kernel"], "kill_only": True}, "kill_only= leaves out 'kernel'"),
    ({"vias": "kernel", "failed_only": True}, "failed_only= keeps failed sends only"),
    ({"signals": "USR1", "exclude_signals": [10]}, "exclude_signals= leaves out every signal"),
    ({"signals": []}, "signals= is empty"),
    ({"pids": [1 << 31]}, "pids= ids must be from 1 to 4194304"),
    ({"target_ids": [0]}, "target_ids= ids must be from 1"),
    ({"vias": "kill,nope"}, "vias= has unknown 'nope'"),
    ({"comm": ""}, "comm= needs a command name"),
])
def test_api_errors_name_the_parameters(kwargs, message) -> None:
    with pytest.raises(errors.UsageError) as caught:
        trace(**kwargs)
    assert message in str(caught.value)
    assert "--" not in str(caught.value)  # no flag names: the CLI adds those


def test_vias_as_a_string_is_a_comma_list() -> None:
    assert make_filters(vias="kill").vias == frozenset({"kill"})
    assert make_filters(vias="kill, tgkill").vias == frozenset({"kill", "tgkill"})


def test_for_cli_turns_parameters_into_flags() -> None:
    err = errors.UsageError("exclude_signals= leaves out every signal of signals=: pids= x")
    assert err.for_cli(cli.API_FLAGS) == ("-e/--exclude-signal leaves out every signal of "
                                         "-s/--signal: -p/--pid x")


# --- the hierarchy ----------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "base", "builtin"), [
    (FilterError, errors.UsageError, ValueError),
    (SignalSpecError, errors.UsageError, ValueError),
    (PrivilegeError, errors.SetupError, PermissionError),
    (TracefsError, errors.SetupError, Exception),
    (BtfScanError, errors.SetupError, Exception),
    (ExporterError, errors.SetupError, RuntimeError),
    (BPFError, errors.KernelError, OSError),
    (VerifierError, errors.KernelError, OSError),
    (ReaderError, errors.KernelError, OSError),
    (AsmError, errors.InternalError, ValueError),
    (SendError, errors.SigscopeError, OSError),
    (TraceError, errors.SigscopeError, RuntimeError),
    (top.TopError, errors.SigscopeError, RuntimeError),
])
def test_every_error_has_its_place(cls, base, builtin) -> None:
    assert issubclass(cls, base) and issubclass(cls, builtin)


def test_arch_error_is_a_setup_error() -> None:
    from sigscope.bpf import arch

    assert issubclass(arch.UnsupportedArchError, errors.SetupError)


def test_exit_codes_by_class() -> None:
    assert errors.UsageError.exit_code == 2
    assert errors.SetupError.exit_code == 3
    assert errors.KernelError.exit_code == errors.InternalError.exit_code == 1
    assert errors.SigscopeError.exit_code == 1


@pytest.mark.parametrize(("error", "code", "line"), [
    (PrivilegeError("needs root"), 3, "sigscope: error: needs root\n"),
    (TracefsError("no tracefs"), 3, "sigscope: error: no tracefs\n"),
    (BPFError(1, "BPF_PROG_LOAD"), 1, "sigscope: error: BPF_PROG_LOAD: Operation not "
                                      "permitted\n"),
    (FilterError("pids= takes at most 16 ids"), 2, "sigscope: error: -p/--pid takes at most "
                                                   "16 ids\n"),
    (SendError(3, "kill(1, SIGUSR1): ESRCH"), 1, "sigscope: error: kill(1, SIGUSR1): ESRCH\n"),
    (OSError(5, "Input/output error"), 1, "sigscope: error: [Errno 5] Input/output error\n"),
])
def test_cli_maps_errors_by_class(capsys, monkeypatch, error, code, line) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.delenv("SIGSCOPE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "run_trace", broken)
    assert cli.main(["trace"]) == code
    assert capsys.readouterr().err == line


@pytest.mark.parametrize("error", [AsmError("immediate 4294967296 out of s32 range"),
                                   ValueError("oops"), KeyError("k"), TypeError("t")])
def test_internal_errors_are_not_usage_errors(capsys, monkeypatch, error) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.delenv("SIGSCOPE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "run_trace", broken)
    assert cli.main(["trace"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sigscope: internal error: {type(error).__name__}: ")
    assert "please report it" in err and "SIGSCOPE_DEBUG=1" in err and err.count("\n") == 1


def test_debug_env_shows_the_traceback(capsys, monkeypatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ValueError("oops")

    monkeypatch.setenv("SIGSCOPE_DEBUG", "1")
    monkeypatch.setattr(cli, "run_trace", broken)
    assert cli.main(["trace"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("SIGSCOPE_DEBUG=1)")


@pytest.mark.parametrize("argv", [["--help"], ["top", "--help"]])
def test_help_documents_the_exit_codes(capsys, argv) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    out = capsys.readouterr().out
    assert "exit status:" in out and "2 bad" in out and "3 the system cannot trace" in out


def test_send_help_documents_the_exit_codes_of_send(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["send", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps nothing here; lines do
    assert "exit status: 0 sent" in out and "1 the kernel refused the send" in out
    assert "2 bad command line" in out and "3 sigscope cannot send here" in out
    assert "cannot trace" not in out and "--duration" not in out  # not trace's statuses


def test_send_exit_status_where_the_syscall_numbers_are_unknown(capsys, monkeypatch) -> None:
    """An architecture whose syscall numbers sigscope lacks: exit 3, as its help says, and a
    SendError (ENOSYS) still for the API."""
    import errno

    from sigscope import send
    from sigscope.bpf.arch import UnsupportedArchError

    def unknown():
        raise UnsupportedArchError("sigscope knows the syscall numbers of x86_64 and aarch64 "
                                   "only, not of m68k")

    monkeypatch.setattr(send, "syscall_numbers", unknown)
    assert cli.main(["send", "USR1", str(os.getpid())]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m68k" in err
    with pytest.raises(send.SendError) as info:
        send.send_signal("kill", 10, pid=os.getpid())
    assert info.value.errno == errno.ENOSYS


def test_send_via_help_lists_every_send_path(capsys) -> None:
    from sigscope.model.record import SYSCALL_VIAS

    with pytest.raises(SystemExit):
        cli.main(["send", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    via_help = out.split("--via VIA", 2)[-1].split("--tid", 1)[0]
    assert all(via in via_help for via in SYSCALL_VIAS) and "default: kill" in via_help


# --- lost and skipped, apart ------------------------------------------------------------------

def test_writers_report_lost_and_skipped_apart() -> None:
    from sigscope.outputs.trace import JsonWriter, TextWriter

    text = io.StringIO()
    writer = TextWriter(text)
    writer.lost(2, 2)
    writer.skipped(21, 21)
    lost, skipped = text.getvalue().splitlines()
    assert lost == "# LOST 2 records after matching the filters (total 2)"
    assert skipped.startswith("# SKIPPED 21 probe runs") and "unknown whether they matched" \
        in skipped
    out = io.StringIO()
    json_writer = JsonWriter(out)
    json_writer.lost(2, 2)
    json_writer.skipped(21, 21)
    import json

    kinds = [(o["type"], o["count"]) for o in map(json.loads, out.getvalue().splitlines())]
    assert kinds == [("lost", 2), ("skipped", 21)]
