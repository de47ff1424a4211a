"""Event: the JSON Lines object of issue 3, names, errors and kernel origins."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sigscope.model.event import ORIGINS, OUTCOMES, Event, kernel_origin, outcome_name
from sigscope.model.origins import KILLERS, ORIGIN_MEANINGS, origin_from_stack

EXAMPLE_TIME_NS = int(datetime(2026, 11, 25, 14, 51, 23, tzinfo=timezone.utc).timestamp()) \
    * 1_000_000_000 + 123_456_789
SCHEMA_KEYS = {"type", "time", "ktime_ns", "sig", "signal", "via", "origin", "sender", "target",
               "args", "code", "code_name", "result", "error", "outcome"}


def make_event(**overrides: object) -> Event:
    fields: dict[str, object] = dict(
        id=1, ktime_ns=123, time_ns=EXAMPLE_TIME_NS, sig=12, via="tgkill",
        sender_pid=601489, sender_tid=601489, sender_comm="bash", sender_uid=1000,
        target_pid=1219543, target_tid=1219543, target_comm="oracle", arg_pid=1219543,
        arg_tid=1219543, arg_pidfd=None, code=-6, result=0, outcome="delivered",
    )
    fields.update(overrides)
    return Event.of(**fields)  # type: ignore[arg-type]


def test_to_dict_has_exactly_the_documented_keys() -> None:
    d = make_event().to_dict()
    assert set(d) == SCHEMA_KEYS | {"id"}
    assert set(d["sender"]) == {"pid", "tid", "comm", "uid", "cgroup_id", "ns_pid", "ns_tid",
                                "container"}
    assert set(d["target"]) == {"pid", "tid", "comm", "cgroup_id", "ns_pid", "ns_tid",
                                "source", "container"}
    assert set(d["args"]) == {"pid", "tid", "pidfd"}


def test_to_dict_values_match_the_issue_example() -> None:
    d = make_event().to_dict()
    assert d["type"] == "signal"
    assert d["time"] == "2026-11-25T14:51:23.123456Z"
    assert (d["ktime_ns"], d["sig"], d["signal"], d["via"], d["origin"]) == (
        123, 12, "SIGUSR2", "tgkill", None)
    assert d["sender"] == {"pid": 601489, "tid": 601489, "comm": "bash", "uid": 1000,
                           "cgroup_id": None, "ns_pid": None, "ns_tid": None,
                           "container": None}
    assert d["target"] == {"pid": 1219543, "tid": 1219543, "comm": "oracle", "cgroup_id": None,
                           "ns_pid": None, "ns_tid": None, "source": None,
                           "container": None}
    assert d["args"] == {"pid": 1219543, "tid": 1219543, "pidfd": None}
    assert (d["code"], d["code_name"], d["result"], d["error"], d["outcome"]) == (
        -6, "SI_TKILL", 0, None, "delivered")
    assert json.loads(json.dumps(d)) == d


def test_time_is_utc_iso_with_microseconds() -> None:
    e = make_event(time_ns=0)
    assert e.iso_time() == "1970-01-01T00:00:00.000000Z"
    parsed = datetime.strptime(make_event().iso_time(), "%Y-%m-%dT%H:%M:%S.%fZ")
    seconds = parsed.replace(tzinfo=timezone.utc).timestamp()
    assert seconds == pytest.approx(EXAMPLE_TIME_NS // 1000 / 1e6)


@pytest.mark.parametrize(("sig", "name"), [
    (0, "0"), (10, "SIGUSR1"), (12, "SIGUSR2"), (32, "SIG32"), (34, "SIGRTMIN"), (37, "SIGRTMIN+3"),
    (64, "SIGRTMAX"), (62, "SIGRTMAX-2"), (99, "SIG#99"),
])
def test_signal_names(sig: int, name: str) -> None:
    assert make_event(sig=sig).to_dict()["signal"] == name


@pytest.mark.parametrize(("result", "error"), [
    (0, None), (-1, "EPERM"), (-3, "ESRCH"), (-22, "EINVAL"), (None, None),
])
def test_errors(result: int | None, error: str | None) -> None:
    e = make_event(result=result, outcome=None)
    assert e.to_dict()["result"] == result
    assert e.error == error
    assert e.failed == (result is not None and result < 0)


def test_failed_send_has_nulls_where_nothing_applies() -> None:
    d = make_event(via="kill", result=-3, outcome=None, code=None, target_tid=None,
                   target_comm=None, arg_tid=None).to_dict()
    assert (d["code"], d["code_name"], d["outcome"], d["error"]) == (None, None, None, "ESRCH")
    assert d["target"] == {"pid": 1219543, "tid": None, "comm": None, "cgroup_id": None,
                           "ns_pid": None, "ns_tid": None, "source": None,
                           "container": None}


SI_USER, SI_KERNEL, SI_TIMER, SI_QUEUE = 0, 0x80, -2, -1


@pytest.mark.parametrize(("sig", "code", "origin"), [
    (11, 1, "fault"),          # SIGSEGV SEGV_MAPERR
    (7, 2, "fault"),           # SIGBUS BUS_ADRERR
    (8, 1, "fault"),           # SIGFPE FPE_INTDIV
    (4, SI_KERNEL, "fault"),   # SIGILL from a trap, no detail
    (5, 1, "fault"),           # SIGTRAP TRAP_BRKPT
    (17, 1, "child"),          # SIGCHLD CLD_EXITED
    (17, 5, "child"),          # SIGCHLD CLD_STOPPED
    (14, SI_KERNEL, "timer"),  # setitimer(ITIMER_REAL)
    (14, SI_TIMER, "timer"),   # POSIX timer
    (40, SI_TIMER, "timer"),   # a POSIX timer with a real-time signal
    (27, SI_KERNEL, "timer"),  # ITIMER_PROF
    (13, SI_USER, "pipe"),     # write to a pipe without readers
    (2, SI_KERNEL, "tty"),     # ^C
    (1, SI_KERNEL, "tty"),     # hangup
    (28, SI_KERNEL, "tty"),    # window size change
    (24, SI_KERNEL, "rlimit"),  # RLIMIT_CPU
    (25, SI_USER, "rlimit"),   # RLIMIT_FSIZE
    (31, 1, "seccomp"),        # SIGSYS SYS_SECCOMP
    (29, 1, "io"),             # SIGIO POLL_IN
    (10, 1, "io"),             # F_SETSIG with SIGUSR1
    (9, SI_KERNEL, "other"),   # a SIGKILL without a stack that names its sender
    (9, SI_USER, "other"),
    (9, SI_TIMER, "timer"),    # a POSIX timer may send SIGKILL too
    (10, SI_USER, "other"),
    (15, SI_KERNEL, "other"),
])
def test_kernel_origin(sig: int, code: int, origin: str) -> None:
    assert kernel_origin(sig, code) == origin
    assert origin in ORIGINS
    e = make_event(via="kernel", sig=sig, code=code, result=None, arg_pid=None, arg_tid=None)
    assert e.to_dict()["origin"] == origin


@pytest.mark.parametrize(("stack", "origin"), [
    (["trace_event_raw_event_signal_generate", "__send_signal_locked", "do_send_sig_info",
      "__oom_kill_process", "oom_kill_process", "out_of_memory"], "oom"),
    (["perf_trace_signal_generate", "__send_signal_locked", "posix_cpu_timers_work.cold",
      "task_work_run"], "rlimit"),
    (["__send_signal_locked", "do_send_sig_info", "zap_pid_ns_processes", "do_exit"],
     "pid_namespace"),
    (["__send_signal_locked", "do_send_sig_info", "__cgroup_kill", "cgroup_kill_write"],
     "cgroup_kill"),
    (["__send_signal_locked", "do_send_sig_info", "do_exit", "do_group_exit"], "parent_death"),
    (["__send_signal_locked", "do_send_sig_info", "ptrace_request", "arch_ptrace"], "ptrace"),
    (["__send_signal_locked", "do_send_sig_info", "sysrq_handle_kill"], None),
    (["__send_signal_locked", "do_send_sig_info"], None),
    ([], None),
])
def test_origin_from_a_sigkill_stack(stack: list[str], origin: str | None) -> None:
    assert origin_from_stack(stack) == origin
    e = make_event(via="kernel", sig=9, code=SI_KERNEL, result=None, arg_pid=None,
                   arg_tid=None, stack_origin=origin_from_stack(stack))
    assert e.origin == (origin or "other")


def test_every_origin_is_defined_once_with_its_meaning() -> None:
    assert ORIGINS == tuple(ORIGIN_MEANINGS) and len(set(ORIGINS)) == len(ORIGINS)
    assert set(KILLERS.values()) <= set(ORIGINS)
    assert all(meaning for meaning in ORIGIN_MEANINGS.values())
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for origin in ORIGINS:
        assert f"`{origin}`" in readme, origin


def test_origin_is_null_for_syscalls() -> None:
    assert make_event(via="kill", sig=17, code=SI_USER).origin is None


def test_outcome_names() -> None:
    assert OUTCOMES == ("delivered", "ignored", "already_pending", "overflow", "lose_info")
    assert [outcome_name(i) for i in range(5)] == list(OUTCOMES)
    assert outcome_name(None) is None and outcome_name(-1) is None


def test_origin_skips_the_tp_btf_program_frame() -> None:
    # A tp_btf program's stack starts with the JITed program itself (kallsyms bpf_prog_*).
    stack = ["bpf_prog_49568f6b77a864d4_sgenerate", "bpf_trace_run5", "__send_signal_locked",
             "__oom_kill_process", "out_of_memory"]
    assert origin_from_stack(stack) == "oom"
    assert origin_from_stack(["bpf_prog_1_x", "frobnicate"]) is None
