"""Signal numbers/names, spec parsing, si_code and errno names."""

from __future__ import annotations

import errno
import signal

import pytest

from sigscope.model import signals as signals_module
from sigscope.model.signals import (
    CORE_SIGNALS,
    DEFAULT_IGNORE_SIGNALS,
    GLIBC_SIGRTMIN,
    KERNEL_SIGRTMIN,
    OUTCOMES,
    SIGNALS,
    SIGRTMAX,
    STOP_SIGNALS,
    SignalSpecError,
    code_name,
    errno_name,
    outcome_name,
    parse_signal,
    parse_signal_list,
    rt_range,
    set_rt_range,
    signal_name,
)


@pytest.fixture
def libc_range():
    """Name real-time signals as a given C library would; restored afterwards."""
    saved = signals_module._rt_range
    yield set_rt_range
    signals_module._rt_range = saved


@pytest.fixture(autouse=True)
def glibc(libc_range):
    libc_range(GLIBC_SIGRTMIN)


def test_numbers_match_the_generic_uapi_numbering():
    expected = {
        "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6,
        "SIGBUS": 7, "SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12,
        "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15, "SIGSTKFLT": 16, "SIGCHLD": 17,
        "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22, "SIGURG": 23,
        "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27, "SIGWINCH": 28,
        "SIGIO": 29, "SIGPWR": 30, "SIGSYS": 31,
    }
    assert dict(SIGNALS) == expected
    assert (KERNEL_SIGRTMIN, SIGRTMAX) == (32, 64)


def test_the_real_time_range_is_this_c_librarys(libc_range):
    signals_module._rt_range = None
    assert rt_range() == (signal.SIGRTMIN, signal.SIGRTMAX)  # Python asked the same libc
    assert signal_name(signal.SIGRTMIN + 1) == "SIGRTMIN+1"
    assert parse_signal("RTMIN+1") == signal.SIGRTMIN + 1


def test_without_an_answer_from_the_c_library_glibcs_values(monkeypatch):
    import ctypes

    def no_libc(name):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert signals_module._ask_libc() == (34, 64)


def test_another_c_librarys_range(libc_range):
    libc_range(35)  # musl also keeps 34
    assert [signal_name(n) for n in (32, 34, 35, 36, 64)] == [
        "SIG32", "SIG34", "SIGRTMIN", "SIGRTMIN+1", "SIGRTMAX"]
    assert parse_signal("RTMIN+1") == 36
    with pytest.raises(ValueError):
        libc_range(31)


def test_numbers_agree_with_this_hosts_signal_module():
    for name, number in SIGNALS.items():
        assert getattr(signal, name) == number, name


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (0, "0"), (1, "SIGHUP"), (6, "SIGABRT"), (10, "SIGUSR1"), (17, "SIGCHLD"), (29, "SIGIO"),
        (31, "SIGSYS"), (32, "SIG32"), (33, "SIG33"), (34, "SIGRTMIN"), (35, "SIGRTMIN+1"),
        (37, "SIGRTMIN+3"), (49, "SIGRTMIN+15"), (50, "SIGRTMAX-14"), (62, "SIGRTMAX-2"),
        (63, "SIGRTMAX-1"), (64, "SIGRTMAX"), (65, "SIG#65"), (-1, "SIG#-1"),
    ],
)
def test_signal_name(number, name):
    assert signal_name(number) == name


def test_every_number_round_trips_through_its_name():
    for number in range(0, 65):
        assert parse_signal(signal_name(number)) == number


@pytest.mark.parametrize(
    ("spec", "number"),
    [
        ("USR2", 12), ("SIGUSR2", 12), ("sigusr2", 12), ("usr2", 12), (" 12 ", 12), ("0", 0),
        ("64", 64), ("SIGRTMIN+3", 37), ("RTMIN+3", 37), ("rtmin", 34), ("SIGRTMAX-2", 62),
        ("RTMAX", 64), ("SIGRTMIN-0", 34), ("IOT", 6), ("SIGPOLL", 29), ("CLD", 17),
        ("SIG32", 32), ("sig33", 33), ("32", 32), ("SIGRTMIN+30", 64),
    ],
)
def test_parse_signal(spec, number):
    assert parse_signal(spec) == number


@pytest.mark.parametrize(
    "spec", ["FOO", "", "SIG", "65", "-1", "SIGRTMIN+31", "SIGRTMAX-31", "RTMIN-1",
     "SIG65", "SIG#32", "USR1x", "1.5"]
)
def test_parse_signal_rejects(spec):
    with pytest.raises(SignalSpecError) as info:
        parse_signal(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "SIGRTMIN+N/SIGRTMAX-N" in message


def test_unknown_signal_message():
    with pytest.raises(SignalSpecError) as info:
        parse_signal("FOO")
    assert str(info.value) == (
        "unknown signal 'FOO': use a name like SIGUSR1 or USR1, a number 1-64, "
        "or SIGRTMIN+N/SIGRTMAX-N"
    )


def test_parse_signal_list():
    assert parse_signal_list("USR1,TERM,12") == frozenset({10, 15, 12})
    assert parse_signal_list(" usr1 , SIGRTMIN+1,") == frozenset({10, 35})
    with pytest.raises(SignalSpecError, match="unknown signal 'BOGUS'"):
        parse_signal_list("USR1,BOGUS")
    with pytest.raises(SignalSpecError, match="empty signal list"):
        parse_signal_list(" , ")


@pytest.mark.parametrize(
    ("code", "sig", "name"),
    [
        (0, 10, "SI_USER"), (0x80, 11, "SI_KERNEL"), (-1, 34, "SI_QUEUE"), (-2, 14, "SI_TIMER"),
        (-3, 10, "SI_MESGQ"), (-4, 10, "SI_ASYNCIO"), (-5, 29, "SI_SIGIO"), (-6, 10, "SI_TKILL"),
        (-7, 9, "SI_DETHREAD"), (-60, 10, "SI_ASYNCNL"),
        (1, 11, "SEGV_MAPERR"), (2, 11, "SEGV_ACCERR"), (4, 11, "SEGV_PKUERR"),
        (1, 7, "BUS_ADRALN"), (4, 7, "BUS_MCEERR_AR"), (5, 7, "BUS_MCEERR_AO"),
        (1, 4, "ILL_ILLOPC"), (9, 4, "ILL_BADIADDR"), (1, 8, "FPE_INTDIV"),
        (14, 8, "FPE_FLTUNK"), (15, 8, "FPE_CONDTRAP"), (9, 8, "9"),
        (1, 5, "TRAP_BRKPT"), (5, 5, "TRAP_UNK"), ((4 << 8) | 5, 5, "SIGTRAP|PTRACE_EVENT_EXEC<<8"),
        (1, 17, "CLD_EXITED"), (2, 17, "CLD_KILLED"), (3, 17, "CLD_DUMPED"),
        (5, 17, "CLD_STOPPED"), (6, 17, "CLD_CONTINUED"), (7, 17, "7"),
        (1, 29, "POLL_IN"), (6, 29, "POLL_HUP"), (1, 40, "POLL_IN"),
        (1, 31, "SYS_SECCOMP"), (2, 31, "2"), (-8, 10, "-8"), (99, 11, "99"),
    ],
)
def test_code_name(code, sig, name):
    assert code_name(code, sig) == name


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (-1, "EPERM"), (1, "EPERM"), (-3, "ESRCH"), (22, "EINVAL"), (-errno.EAGAIN, "EAGAIN"),
        (errno.EDEADLK, "EDEADLK"), (errno.EOPNOTSUPP, "EOPNOTSUPP"), (-512, "ERESTARTSYS"),
        (-516, "ERESTART_RESTARTBLOCK"), (0, "0"), (-4000, "E#4000"),
    ],
)
def test_errno_name(value, name):
    assert errno_name(value) == name


def test_outcome_name_follows_the_trace_signal_enum():
    # enum TRACE_SIGNAL_* order; OVERFLOW_FAIL is reported as "overflow" (the CLI's word).
    assert [outcome_name(n) for n in range(6)] == [
        "delivered", "ignored", "already_pending", "overflow", "lose_info", "5",
    ]
    assert list(OUTCOMES) == [outcome_name(n) for n in range(5)]
    assert outcome_name(-1) is None and outcome_name(None) is None


def test_default_action_sets_are_signal_7():
    names = {number: name for name, number in SIGNALS.items()}
    assert {names[n] for n in STOP_SIGNALS} == {"SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"}
    assert {names[n] for n in DEFAULT_IGNORE_SIGNALS} == {"SIGCHLD", "SIGURG", "SIGWINCH"}
    assert {names[n] for n in CORE_SIGNALS} == {
        "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV", "SIGXCPU",
        "SIGXFSZ", "SIGSYS"}
    assert not (STOP_SIGNALS & DEFAULT_IGNORE_SIGNALS or STOP_SIGNALS & CORE_SIGNALS
                or DEFAULT_IGNORE_SIGNALS & CORE_SIGNALS)
