"""Linux signal numbers and names, si_code and errno names, and parsing of user signal specs.

Numbers are the kernel's, as seen in tracepoints: x86_64 and aarch64 both use the generic numbering
of include/uapi/asm-generic/signal.h. Real-time signals run from the kernel's SIGRTMIN = 32 to
SIGRTMAX = 64; glibc reserves 32 and 33 for itself and calls 34 "SIGRTMIN", but a tracer must show
what the kernel sees, so "SIGRTMIN" here always means 32.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Mapping

__all__ = [
    "CODE_NAMES",
    "CORE_SIGNALS",
    "DEFAULT_IGNORE_SIGNALS",
    "GENERIC_CODES",
    "OUTCOMES",
    "SIGCHLD",
    "SIGCONT",
    "SIGKILL",
    "SIGNALS",
    "SIGRTMAX",
    "SIGRTMIN",
    "SIGSTOP",
    "STOP_SIGNALS",
    "SYS_SECCOMP",
    "SI_QUEUE",
    "SI_TIMER",
    "SI_TKILL",
    "SI_USER",
    "SI_KERNEL",
    "SignalSpecError",
    "code_name",
    "errno_name",
    "outcome_name",
    "parse_signal",
    "parse_signal_list",
    "signal_name",
]

# include/uapi/asm-generic/signal.h (identical numbers on x86_64).
SIGNALS: Mapping[str, int] = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGBUS": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGUSR1": 10,
    "SIGSEGV": 11,
    "SIGUSR2": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGSTKFLT": 16,
    "SIGCHLD": 17,
    "SIGCONT": 18,
    "SIGSTOP": 19,
    "SIGTSTP": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGURG": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGIO": 29,
    "SIGPWR": 30,
    "SIGSYS": 31,
}
# Other names for the same numbers: accepted when parsing, never printed.
_ALIASES: Mapping[str, int] = {
    "SIGIOT": 6,
    "SIGCLD": 17,
    "SIGPOLL": 29,
    "SIGUNUSED": 31,
}
SIGRTMIN = 32
SIGRTMAX = 64  # _NSIG
# Like bash and strace: the lower half of the RT range is named from SIGRTMIN, the upper half
# from SIGRTMAX.
_RT_SPLIT = 48

_NAME_BY_NUMBER: dict[int, str] = {number: name for name, number in SIGNALS.items()}

_SPEC_HELP = "use a name like SIGUSR1 or USR1, a number 1-64, or SIGRTMIN+N/SIGRTMAX-N"


class SignalSpecError(ValueError):
    """A signal spec given by the user could not be parsed (one-line message)."""


def signal_name(number: int) -> str:
    """SIGUSR1, SIGRTMIN+3, SIGRTMAX-2; "0" for the null signal; "SIG#<n>" when unknown."""
    if number == 0:
        return "0"
    name = _NAME_BY_NUMBER.get(number)
    if name is not None:
        return name
    if number == SIGRTMIN:
        return "SIGRTMIN"
    if number == SIGRTMAX:
        return "SIGRTMAX"
    if SIGRTMIN < number <= _RT_SPLIT:
        return f"SIGRTMIN+{number - SIGRTMIN}"
    if _RT_SPLIT < number < SIGRTMAX:
        return f"SIGRTMAX-{SIGRTMAX - number}"
    return f"SIG#{number}"


_RT_SPEC = re.compile(r"^(?:SIG)?RT(?P<base>MIN|MAX)(?:(?P<sign>[+-])(?P<offset>\d+))?$")


def parse_signal(spec: str) -> int:
    """Parse "USR2", "SIGUSR2", "sigusr2", "12", "SIGRTMIN+3", "RTMIN+3", "SIGRTMAX-2" or "0"."""
    text = spec.strip().upper()
    if text.isdigit():
        number = int(text)
        if number > SIGRTMAX:
            raise SignalSpecError(f"signal number {number} is out of range: {_SPEC_HELP}")
        return number
    rt = _RT_SPEC.match(text)
    if rt is not None:
        base = SIGRTMIN if rt.group("base") == "MIN" else SIGRTMAX
        offset = int(rt.group("offset") or 0)
        number = base + offset if rt.group("sign") == "+" else base - offset
        if not SIGRTMIN <= number <= SIGRTMAX:
            raise SignalSpecError(
                f"signal {spec.strip()!r} is outside SIGRTMIN..SIGRTMAX (32-64): {_SPEC_HELP}"
            )
        return number
    name = text if text.startswith("SIG") else "SIG" + text
    found = SIGNALS.get(name)
    if found is None:
        found = _ALIASES.get(name)
    if found is None:
        raise SignalSpecError(f"unknown signal {spec.strip()!r}: {_SPEC_HELP}")
    return found


def parse_signal_list(spec: str) -> frozenset[int]:
    """Parse a comma-separated list such as "USR1,TERM,12" (empty items are ignored)."""
    items = [item for item in spec.split(",") if item.strip()]
    if not items:
        raise SignalSpecError(f"empty signal list {spec!r}: {_SPEC_HELP}")
    return frozenset(parse_signal(item) for item in items)


# --- si_code -----------------------------------------------------------------------------------
# include/uapi/asm-generic/siginfo.h
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_MESGQ = -3
SI_ASYNCIO = -4
SI_SIGIO = -5
SI_TKILL = -6
SI_DETHREAD = -7
SI_ASYNCNL = -60

# Codes that mean the same for every signal.
GENERIC_CODES: Mapping[int, str] = {
    SI_USER: "SI_USER",
    SI_KERNEL: "SI_KERNEL",
    SI_QUEUE: "SI_QUEUE",
    SI_TIMER: "SI_TIMER",
    SI_MESGQ: "SI_MESGQ",
    SI_ASYNCIO: "SI_ASYNCIO",
    SI_SIGIO: "SI_SIGIO",
    SI_TKILL: "SI_TKILL",
    SI_DETHREAD: "SI_DETHREAD",
    SI_ASYNCNL: "SI_ASYNCNL",
}


def _numbered(*names: str) -> dict[int, str]:
    """Positive per-signal codes are numbered from 1 in UAPI order."""
    return {index: name for index, name in enumerate(names, start=1) if name}


_ILL_CODES = _numbered(
    "ILL_ILLOPC", "ILL_ILLOPN", "ILL_ILLADR", "ILL_ILLTRP", "ILL_PRVOPC", "ILL_PRVREG",
    "ILL_COPROC", "ILL_BADSTK", "ILL_BADIADDR",
)
_FPE_CODES = _numbered(
    "FPE_INTDIV", "FPE_INTOVF", "FPE_FLTDIV", "FPE_FLTOVF", "FPE_FLTUND", "FPE_FLTRES",
    "FPE_FLTINV", "FPE_FLTSUB", "", "", "", "", "", "FPE_FLTUNK", "FPE_CONDTRAP",
)
_SEGV_CODES = _numbered(
    "SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR", "SEGV_PKUERR", "SEGV_ACCADI", "SEGV_ADIDERR",
    "SEGV_ADIPERR",
)
_BUS_CODES = _numbered("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO")
_TRAP_CODES = _numbered("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK")
_CLD_CODES = _numbered(
    "CLD_EXITED", "CLD_KILLED", "CLD_DUMPED", "CLD_TRAPPED", "CLD_STOPPED", "CLD_CONTINUED",
)
_POLL_CODES = _numbered("POLL_IN", "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP")
SYS_SECCOMP = 1  # SIGSYS si_code: seccomp(2) SECCOMP_RET_TRAP
_SYS_CODES = {SYS_SECCOMP: "SYS_SECCOMP"}

# Per-signal positive codes. Signals without their own set use the POLL_* codes (the UAPI says
# so: fcntl(F_SETSIG) delivers any signal with POLL_* reasons).
CODE_NAMES: Mapping[int, Mapping[int, str]] = {
    SIGNALS["SIGILL"]: _ILL_CODES,
    SIGNALS["SIGFPE"]: _FPE_CODES,
    SIGNALS["SIGSEGV"]: _SEGV_CODES,
    SIGNALS["SIGBUS"]: _BUS_CODES,
    SIGNALS["SIGTRAP"]: _TRAP_CODES,
    SIGNALS["SIGCHLD"]: _CLD_CODES,
    SIGNALS["SIGSYS"]: _SYS_CODES,
}

# include/uapi/linux/ptrace.h: ptrace event stops report SIGTRAP with
# si_code = (PTRACE_EVENT_x << 8) | SIGTRAP.
_PTRACE_EVENTS: Mapping[int, str] = {
    1: "PTRACE_EVENT_FORK",
    2: "PTRACE_EVENT_VFORK",
    3: "PTRACE_EVENT_CLONE",
    4: "PTRACE_EVENT_EXEC",
    5: "PTRACE_EVENT_VFORK_DONE",
    6: "PTRACE_EVENT_EXIT",
    7: "PTRACE_EVENT_SECCOMP",
    128: "PTRACE_EVENT_STOP",
}


def code_name(code: int, sig: int) -> str:
    """The UAPI name of si_code `code` for signal `sig`, or str(code) when it has none."""
    generic = GENERIC_CODES.get(code)
    if generic is not None:
        return generic
    if code > 0:
        sigtrap = SIGNALS["SIGTRAP"]
        if sig == sigtrap and code & 0xFF == sigtrap and (code >> 8) in _PTRACE_EVENTS:
            return f"SIGTRAP|{_PTRACE_EVENTS[code >> 8]}<<8"
        name = CODE_NAMES.get(sig, _POLL_CODES).get(code)
        if name is not None:
            return name
    return str(code)


# --- errno -------------------------------------------------------------------------------------
# Python's errno.errorcode picks one name where Linux has aliases; prefer the names people grep for.
_PREFERRED_ERRNO_NAMES: Mapping[int, str] = {
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
}
# include/linux/errno.h: kernel-internal codes that tracepoints can still show (interrupted
# syscalls).
_KERNEL_ERRNO_NAMES: Mapping[int, str] = {
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
}


def errno_name(value: int) -> str:
    """EPERM for 1 or -1 (syscall returns are negative); "0" for 0; "E#<n>" when unknown."""
    number = abs(value)
    if number == 0:
        return "0"
    name = (
        _PREFERRED_ERRNO_NAMES.get(number)
        or _KERNEL_ERRNO_NAMES.get(number)
        or _errno.errorcode.get(number)
    )
    return name if name is not None else f"E#{number}"


# --- signal_generate `result` ------------------------------------------------------------------
# include/trace/events/signal.h, enum TRACE_SIGNAL_* (DELIVERED, IGNORED, ALREADY_PENDING,
# OVERFLOW_FAIL, LOSE_INFO), in the names sigscope reports: index = the tracepoint's `result`.
OUTCOMES: tuple[str, ...] = (
    "delivered",
    "ignored",
    "already_pending",
    "overflow",
    "lose_info",
)


def outcome_name(result: int | None) -> str | None:
    """What signal_generate's `result` says became of the signal, e.g. "ignored"; None when
    nothing was generated (None or negative: record.GEN_NONE); str(result) when unknown."""
    if result is None or result < 0:
        return None
    return OUTCOMES[result] if result < len(OUTCOMES) else str(result)


# --- signals by default action ---------------------------------------------------------------
# signal(7), "Standard signals"; the kernel's sig_kernel_stop/sig_kernel_ignore/
# sig_kernel_coredump masks (include/linux/signal.h). Every other standard signal terminates.
SIGKILL = SIGNALS["SIGKILL"]
SIGCHLD = SIGNALS["SIGCHLD"]
SIGCONT = SIGNALS["SIGCONT"]
SIGSTOP = SIGNALS["SIGSTOP"]
STOP_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"))
DEFAULT_IGNORE_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGCHLD", "SIGURG", "SIGWINCH"))
CORE_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
                               "SIGSEGV", "SIGXCPU", "SIGXFSZ", "SIGSYS"))
