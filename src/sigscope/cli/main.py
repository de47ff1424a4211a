"""The `sigscope` command: a thin shell over the Python API.

Every failure the user can cause or meet (bad input, missing privileges, no tracefs, a kernel
without BPF, a verifier rejection) ends as one line on stderr and the exit status of its class
in sigscope.errors; an unexpected exception is reported as an internal error, in one line too
(the traceback with SIGSCOPE_DEBUG=1).

Ctrl-C, SIGTERM and SIGHUP are caught from the first line of main() on: they only ask the
running command to stop, so a signal during start-up, tracing or teardown never surfaces as a
KeyboardInterrupt traceback. Only os, signal and sys are imported before that: the rest of the
command line (argparse included) is imported once the handlers are in place.
"""

from __future__ import annotations

# Before main() installs its handlers a Ctrl-C is a KeyboardInterrupt traceback: import only
# what is built in or already loaded by the interpreter (_signal, not signal: that imports enum;
# no typing: mypy reads TYPE_CHECKING by its name).
import _signal  # type: ignore[import-not-found]  # no stub: the C half of signal
import os
import sys

from sigscope import __version__
from sigscope.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_SETUP,
    EXIT_USAGE,
    InternalError,
    SigscopeError,
    UsageError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import NoReturn, TextIO

LOST_CHECK_INTERVAL_S = 0.1
# Bounds of -i/--interval and -d/--duration, in seconds. Below MIN_INTERVAL_S a table is
# redrawn faster than it can be read, and a read of a full map (~30 ms at 10240 keys) would
# take most of the interval; the upper bounds keep every deadline a finite, exact float.
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 86400.0
MIN_DURATION_S = 0.001
MAX_DURATION_S = 1e9
MAX_BUFFER_SIZE = 1 << 30
# include/linux/threads.h: PID_MAX_LIMIT on 64-bit kernels; no pid or tid is larger.
PID_MAX_LIMIT = 4 * 1024 * 1024
# What the library calls a parameter ("signals=") and the command line calls it.
API_FLAGS = {
    "pids": "-p/--pid", "target_ids": "-T/--tpid", "signals": "-s/--signal",
    "exclude_signals": "-e/--exclude-signal", "comm": "-c/--comm", "vias": "--via",
    "failed_only": "-x/--failed", "kill_only": "-k/--kill-only", "duration": "-d/--duration",
    "buffer_size": "--buffer-size", "buffer": "--buffer", "max_keys": "--max-keys",
    "map_kind": "--map-kind", "labels": "--labels", "value": "--value", "tid": "--tid",
    "cgroups": "--cgroup", "containers": "--container",
}

EXIT_CODES = f"""\
exit status: 0 done (also after Ctrl-C, SIGTERM, SIGHUP or --duration); {EXIT_USAGE} bad
  command line or filter; {EXIT_SETUP} the system cannot trace (privileges, tracefs, BTF,
  kernel features, the exporter's dependency or address); {EXIT_ERROR} the kernel refused (bpf(2),
  the verifier), a send failed, or an internal error; {EXIT_INTERRUPTED} stopped before tracing
  began.
"""
# Said once, with the summary, where the kernel has no bpf_prog_info.recursion_misses (< 5.12).
_SKIPPED_UNCOUNTED = ("sigscope: this kernel cannot count the probe runs it skipped (no "
                      "recursion_misses before Linux 5.12): 'lost' leaves them out")

TRACE_EXAMPLES = """\
examples:
  sigscope                          # every signal on the system, live
  sigscope trace -s USR2            # only SIGUSR2 (names with or without SIG, numbers,
                                    #   SIGRTMIN+N, comma lists)
  sigscope trace -T 1219543         # signals to process or thread 1219543
  sigscope trace -p 601489 -x       # failed sends by process 601489
  sigscope trace --via tgkill,tkill # only thread-directed syscalls
  sigscope trace -k -e CHLD         # syscalls only, no SIGCHLD
  sigscope trace -c oracle -j       # sends by 'oracle' processes, as JSON Lines
  sigscope trace -d 10 -t           # ten seconds, relative timestamps
  sigscope trace --containers -s TERM,KILL  # who stops which container
  sigscope trace --cgroup /system.slice/nginx.service
                                    # signals sent from or to that cgroup (and below it)
  sigscope trace --container 4f1c2a # from or to the container whose id starts with 4f1c2a

Filter options may be repeated: their lists add up (-s USR1 -s USR2 is -s USR1,USR2).
Command names and other strings from processes are printed with control and non-printable
characters escaped (\\n, \\t, \\xNN, \\\\), as ps and strace do; JSON keeps them exact.

columns: TIME PID TID COMM (sender) VIA (send path) SIG TPID TTID TCOMM (recipient; for a
  send that reached nobody, TPID and TTID show what it addressed in parentheses: '(-4242)')
  RESULT (syscall return: 0, -EPERM...; '-' for kernel-generated) OUTCOME (what the kernel
  did: delivered, ignored, already_pending, overflow, lose_info; '-' when nothing was sent).

--fate follows each queued signal to its end. Each send is printed at once with its ID (#17)
and FATE '...'; its fate follows as its own line when known, tied by the id ('->#17'): PID TID
COMM there are the thread that took the signal, LAT the time from generation to delivery, FATE
the effect (handled <address> <flags>, ignored, stopped, continued, terminated, core_dumped,
consumed, flushed, discarded, unknown) and a death's cause, e.g. 'terminated (SIGTERM)'. Fate
lines trail their deliveries by a few milliseconds; a signal still queued when tracing ends is
reported then as 'pending'. Real-time signals are matched first in, first out. With -j the fate
is a {"type": "fate"} record with the signal record's "id".

--containers adds CONTAINER and TCONTAINER: the sender's and the recipient's container, by
the name a local source gives (kubelet logs: namespace/pod/container; docker, podman, CRI-O
records) or the first 12 hex digits of its id; '-' outside a container or when unknown. The
cgroup ids are the kernel's at the event; the containers are resolved from them afterwards.

LOST lines count records that matched the filters but could not be handed over (buffer or
in-flight map full). SKIPPED lines count probe runs the kernel skipped because another BPF
program was running on that CPU: whether they would have matched the filters is unknown.

""" + EXIT_CODES

TOP_EXAMPLES = """\
examples:
  sigscope top                      # who signals whom, every second, busiest first
  sigscope top -c oracle -i 5 -C    # sends by 'oracle' processes, 5 s intervals, appended
  sigscope top --sort target -n 50  # 50 rows, grouped by target
  sigscope top -j -d 60             # one JSON object per interval, for a minute
  sigscope top --cgroup /kubepods.slice # signals from or to any pod's cgroup on this node
  sigscope top --prometheus :9567   # serve /metrics (no table unless --table or --json)
  sigscope top --prometheus 127.0.0.1:9567 --labels signal,via,sender_comm
  sigscope top --containers         # with CONTAINER and TCONTAINER columns
  sigscope top --prometheus :9567 --labels signal,sender_container,target_container,pod_uid

Counts are kept in the kernel (a BPF hash map of at most --max-keys keys, default 10240): no
per-signal record reaches user space. Keys that do not fit are counted in "other". On exit a last,
partial interval is printed (below the last full table), so the intervals add up to every signal
seen. With --prometheus alone (no --table, no --json) the kernel keys its counts by the exported
labels only, so short-lived processes do not fill the map: counts stay exact for as long as the
exporter runs.

""" + EXIT_CODES

# What `send` itself can end with (run_send, send.send_signal): it loads nothing into the kernel.
SEND_EXIT_CODES = f"""\
exit status: 0 sent (the kernel accepted the signal; what became of it is for `trace` to
  tell); {EXIT_ERROR} the kernel refused the send (or the pidfd_open(2) before it): the call and
  its errno are printed, e.g. "kill(4242, SIGUSR2) failed: ESRCH (No such process)"; also an
  internal error; {EXIT_USAGE} bad command line (an unknown signal, a missing PID or --tid, a
  --tid or --value the path does not take); {EXIT_SETUP} sigscope cannot send here (this
  architecture's syscall numbers are unknown to it); {EXIT_INTERRUPTED} interrupted (Ctrl-C,
  SIGTERM, SIGHUP).
"""

SEND_EXAMPLES = """\
examples:
  sigscope send SIGUSR2 1219543                    # kill(2)
  sigscope send --via tgkill --tid 1219543 USR2 1219543
  sigscope send --via tkill --tid 4242 TERM        # a single thread, no pid needed
  sigscope send --via rt_sigqueueinfo --value 7 RTMIN+1 1219543
  sigscope send --via pidfd_send_signal HUP 1219543

""" + SEND_EXIT_CODES

COMMANDS = ("trace", "top", "send", "selftest")
VALUE_VIAS = ("rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal")
TID_VIAS = ("tkill", "tgkill", "rt_tgsigqueueinfo")


class ArgumentError(UsageError):
    """A bad command line; str() is the whole line, prefixed with the command's name."""


def _type_error(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise _type_error(f"not a number: {text!r}") from None
    if value <= 0:
        raise _type_error(f"must be positive: {text!r}")
    return value


def _id(text: str) -> int:
    value = _positive_int(text)
    if value > PID_MAX_LIMIT:
        raise _type_error(f"no process or thread id is above {PID_MAX_LIMIT}: {text!r}")
    return value


def _id_list(text: str) -> list[int]:
    ids = [_id(item.strip()) for item in text.split(",") if item.strip()]
    if not ids:
        raise _type_error(f"empty list {text!r}: give at least one id")
    return ids


def _name_list(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise _type_error(f"empty list {text!r}: give at least one name")
    return names


def _seconds(text: str, low: float, high: float) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise _type_error(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise _type_error(f"must be a finite number of seconds: {text!r}")
    if value <= 0:
        raise _type_error(f"must be positive: {text!r}")
    if not low <= value <= high:
        raise _type_error(f"must be between {low:g} and {high:g} seconds: {text!r}")
    return value


def _duration(text: str) -> float:
    return _seconds(text, MIN_DURATION_S, MAX_DURATION_S)


def _interval(text: str) -> float:
    return _seconds(text, MIN_INTERVAL_S, MAX_INTERVAL_S)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    spec = text.strip().lower().rstrip("b")
    factor = units.get(spec[-1:], 1)
    number = spec[:-1] if spec[-1:] in units else spec
    try:
        value = int(number) * factor
    except ValueError:
        raise _type_error(f"not a size: {text!r} (e.g. 16M, 512K)") from None
    if value < 4096:
        raise _type_error("buffer size must be at least 4K")
    if value > MAX_BUFFER_SIZE:
        raise _type_error(f"buffer size must be at most 1G, not {text!r}")
    return value


def _int_value(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise _type_error(f"not an integer: {text!r} (e.g. 7, -1, 0x10)") from None
    if not -(1 << 63) <= value < (1 << 64):
        raise _type_error(f"does not fit in 64 bits: {text!r}")
    return value


def _pid_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise _type_error(f"not a number: {text!r}") from None
    # pid_t is an int; kill(2) takes -pgid and -1 too. Within that, the kernel says ESRCH.
    if not -(1 << 31) < value < (1 << 31):
        raise _type_error(f"not a pid_t (a 32-bit signed integer): {text!r}")
    return value


def _parser_class():  # argparse is imported only once the signal handlers are in place
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other error
            raise ArgumentError(f"{self.prog}: {message}")

    return Parser


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """The filters shared by `trace` and `top` (applied in the kernel). Every list option may
    be repeated: the lists add up."""
    from sigscope.model.record import SYSCALL_VIAS, VIA_KERNEL, VIA_NAMES

    p.add_argument("-p", "--pid", type=_id_list, action="extend", default=[],
                   metavar="PID[,PID]", help="only signals sent by these processes")
    p.add_argument("-T", "--tpid", type=_id_list, action="extend", default=[],
                   metavar="ID[,ID]",
                   help="only signals to these processes or threads (the receiving task's "
                        "tgid or tid; a send that generated nothing matches on its "
                        "arguments, unless they are numbers of the sender's own nested "
                        "pid namespace)")
    p.add_argument("-s", "--signal", action="append", metavar="SIG[,SIG]",
                   help="only these signals (USR1, SIGUSR1, 10, SIGRTMIN+3, comma lists)")
    p.add_argument("-e", "--exclude-signal", action="append", metavar="SIG[,SIG]",
                   help="leave these signals out")
    p.add_argument("-c", "--comm", action="append",
                   help="only signals sent by this command name")
    p.add_argument("--cgroup", action="append", default=[], metavar="PATH",
                   help="only signals whose sender or recipient is in this cgroup v2 or below "
                        "it (a path below the hierarchy, e.g. /system.slice/foo.service, or "
                        "under its mount point); a send that reached nobody matches by its "
                        "sender; without kernel BTF, by its sender only")
    p.add_argument("--container", action="append", default=[], metavar="ID",
                   help="as --cgroup, for the cgroups of the running containers whose id "
                        "starts with ID (docker, containerd/CRI, CRI-O, podman)")
    p.add_argument("--via", type=_name_list, action="extend", metavar="VIA[,VIA]",
                   help="only these send paths: "
                        + ", ".join((*SYSCALL_VIAS, VIA_NAMES[VIA_KERNEL])))
    p.add_argument("-x", "--failed", action="store_true", help="only sends that failed")
    p.add_argument("-k", "--kill-only", action="store_true",
                   help="syscalls only, no kernel-generated signals")
    p.add_argument("--host-root", default="/", metavar="DIR",
                   help="where the host's /var is seen, for container and pod names "
                        "(default /; /host in the DaemonSet)")
    p.add_argument("-d", "--duration", type=_duration, metavar="SECONDS",
                   help=f"stop after this many seconds ({MIN_DURATION_S:g} to "
                        f"{MAX_DURATION_S:g})")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from sigscope.model.record import SYSCALL_VIAS
    from sigscope.trace_settings import BUFFER_KINDS, DEFAULT_BUFFER_SIZE

    raw = argparse.RawDescriptionHelpFormatter
    parser_class = _parser_class()
    # `sigscope` alone is `sigscope trace`, so its help shows the trace examples too.
    parser = parser_class(prog="sigscope", description="Every signal on the system: who sent "
                          "it, by which path, to which process and thread,\nand what became "
                          "of it.", epilog=TRACE_EXAMPLES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"sigscope {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=parser_class)

    trace = sub.add_parser("trace", help="trace signals live (the default command)",
                           epilog=TRACE_EXAMPLES, formatter_class=raw,
                           description="Trace every signal: the six signal syscalls (with their "
                           "arguments and return value) and kernel-generated signals, one record "
                           "per send attempt and recipient.")
    add_filter_options(trace)
    trace.add_argument("--buffer", choices=BUFFER_KINDS, default=BUFFER_KINDS[0],
                       help="event transport (default: ring buffer when the kernel has it)")
    trace.add_argument("--buffer-size", type=_size, default=DEFAULT_BUFFER_SIZE, metavar="SIZE",
                       help="kernel buffer size (default 16M, at most 1G)")
    trace.add_argument("-j", "--json", action="store_true", help="JSON Lines output")
    trace.add_argument("-t", "--timestamp", action="store_true",
                       help="relative timestamps (seconds since the first record)")
    trace.add_argument("--ebpf", action="store_true", help="print the BPF programs and exit")
    trace.add_argument("--fate", action="store_true",
                       help="also report what became of each signal: delivery (thread, latency, "
                            "disposition), effect, cause of death (see below)")
    trace.add_argument("--no-signalfd", dest="follow_signalfd", action="store_false",
                       help="with --fate: do not follow signalfd reads (a signal read from a "
                            "signalfd then ends unknown or discarded), sparing every read(2) "
                            "on the system two tracepoints")
    trace.add_argument("--containers", action="store_true",
                       help="add CONTAINER and TCONTAINER columns: the sender's and the "
                            "recipient's container (name, or 12 hex digits of its id); JSON "
                            "always carries sender.container and target.container")

    send = sub.add_parser("send", help="send a signal through any of the six syscalls",
                          epilog=SEND_EXAMPLES, formatter_class=raw)
    send.add_argument("--via", default=SYSCALL_VIAS[0], choices=SYSCALL_VIAS, metavar="VIA",
                      help=f"the syscall to send with (default: {SYSCALL_VIAS[0]}): "
                           f"{', '.join(SYSCALL_VIAS)}")
    send.add_argument("--tid", type=_id, help=f"target thread ({', '.join(TID_VIAS)})")
    no_value = [via for via in SYSCALL_VIAS if via not in VALUE_VIAS]
    send.add_argument("--value", type=_int_value, help=f"sigval ({', '.join(VALUE_VIAS)}; "
                      f"{', '.join(no_value)} carry none)")
    send.add_argument("signal", help="signal name or number")
    send.add_argument("pid", nargs="?", type=_pid_arg, help="target process")

    sub.add_parser("selftest", help="load a probe, send ourselves signals, check they are seen",
                   epilog=EXIT_CODES, formatter_class=raw)

    add_top_parser(sub, raw)
    return parser


class _Stopper:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh) ask the command to stop.

    The handler never raises: it records the request and calls the running command's stop
    function, if one is registered yet. A command checks `requested` before it loads anything.
    """

    SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._target: Callable[[], None] | None = None
        # Commands with nothing to take down (send, selftest) are simply interrupted.
        self.interruptible = False

    def install(self) -> None:
        for signum in self.SIGNALS:
            _signal.signal(signum, self._handle)
        # A parent that left them blocked (or a test holding them pending until now) must not
        # make us unstoppable: from here on each of them is handled.
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, self.SIGNALS)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is None:
            self.requested = signum
        if self._target is not None:
            self._target()
        elif self.interruptible:
            raise KeyboardInterrupt  # caught in main(): exit 130

    def on_stop(self, target: Callable[[], None]) -> None:
        self._target = target
        if self.requested is not None:
            target()


_stopper = _Stopper()


def _dispatch_argv(argv: list[str]) -> list[str]:
    """`sigscope [options]` is `sigscope trace [options]`; an unknown word in first place is
    a misspelt command, not an argument of trace (which takes none)."""
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        return ["trace", *argv]
    if argv[0] not in COMMANDS and not argv[0].startswith("-"):
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ArgumentError(f"sigscope: unknown command {argv[0]!r} (choose from "
                            f"{', '.join(COMMANDS)}){hint}")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    installed = argv is None  # as a program (not called from a test or another program)
    if installed:
        _stopper.install()
    try:
        args_list = _dispatch_argv(list(sys.argv[1:] if argv is None else argv))
        args = build_parser().parse_args(args_list)
        handler: Callable[[argparse.Namespace], int] = {
            "trace": run_trace, "top": run_top, "send": run_send, "selftest": run_selftest,
        }[args.command]
        return handler(args)
    except KeyboardInterrupt:  # only when main() was called with the default handler
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as err:  # noqa: BLE001 — the user sees one line, never a traceback
        if _stopper.requested is not None and isinstance(err, SigscopeError):
            # A signal during start-up makes the verifier give up (-EAGAIN) or a syscall fail
            # (-EINTR): that is the stop the user asked for, not an error to report.
            return EXIT_INTERRUPTED
        return _report(err)


def _quiet_stdout() -> None:
    # Python would complain about the broken pipe once more when flushing at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def _print_err(text: str) -> None:
    """A line on stderr that never raises (the terminal may be gone: SIGHUP)."""
    try:
        if sys.stderr is not None:
            print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


REPORT_HINT = ("this is a bug in sigscope: please report it, with the output of the same "
               "command run with SIGSCOPE_DEBUG=1")


def _report(err: BaseException) -> int:
    """One line for any error, and its exit status by class (sigscope.errors)."""
    if os.environ.get("SIGSCOPE_DEBUG"):
        log = getattr(err, "log", "")  # a VerifierError's full verifier log: only on request
        if log:
            print(log, file=sys.stderr)
        import traceback

        traceback.print_exception(err)
    if isinstance(err, ArgumentError):
        _print_err(str(err))
        return err.exit_code
    message = str(err) or type(err).__name__
    if isinstance(err, UsageError):
        _print_err(f"sigscope: error: {err.for_cli(API_FLAGS)}")
        return err.exit_code
    if isinstance(err, InternalError) or not isinstance(err, (SigscopeError, OSError)):
        # OSError that is no SigscopeError: the environment (EIO, ENOSPC on stdout...), not a
        # bug. Anything else unexpected is one.
        _print_err(f"sigscope: internal error: {type(err).__name__}: {message} ({REPORT_HINT})")
        return EXIT_ERROR
    _print_err(f"sigscope: error: {message}")
    return err.exit_code if isinstance(err, SigscopeError) else EXIT_ERROR


def filters_from_args(args: argparse.Namespace):
    """The Filters of the command line (raises UsageError in the API's words)."""
    from sigscope.model.filters import Filters, make_filters
    from sigscope.model.signals import parse_signal_list

    def signals(specs: list[str] | None) -> frozenset[int] | None:
        if specs is None:
            return None
        return frozenset().union(*(parse_signal_list(spec) for spec in specs))

    if not os.path.isdir(args.host_root):
        raise ArgumentError(f"sigscope {args.command}: argument --host-root: not a directory: "
                            f"{args.host_root!r}")
    comms = args.comm or []
    if len(set(comms)) > 1:
        raise ArgumentError(f"sigscope {args.command}: argument -c/--comm: given "
                            f"{len(set(comms))} different names; a sender has one command name")
    filters: Filters = make_filters(
        signals=signals(args.signal), exclude_signals=signals(args.exclude_signal),
        pids=args.pid, target_ids=args.tpid, comm=comms[0] if comms else None, vias=args.via,
        failed_only=args.failed, kill_only=args.kill_only, cgroups=_cgroup_pairs(args),
    )
    return filters


def _cgroup_pairs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """--cgroup and --container as (cgroup id, level) pairs (cgroup_filter.py; its errors
    are one line: exit 2 for a bad path or prefix, 3 without a cgroup v2 hierarchy)."""
    if not args.cgroup and not args.container:
        return []
    from sigscope import cgroup_filter

    pairs = [cgroup_filter.of_path(path) for path in args.cgroup]
    for prefix in args.container:
        pairs += cgroup_filter.of_container(prefix)
    return sorted(set(pairs))


def recipient_cgroup_note(filters) -> str | None:
    """The one line to say at start when --cgroup/--container cannot see recipients (the
    tracefs signal_generate: no tp_btf): they then match by the sender alone."""
    if not filters.cgroups:
        return None
    from sigscope.programs import context
    from sigscope.programs import signal as probes

    if probes.recipient_source_is_task() and context.cgroup_layout() is not None:
        return None
    return ("sigscope: the recipient's cgroup is unknown here (signal_generate read through "
            "tracefs): --cgroup/--container match the sender's cgroup only")


def _stdout() -> TextIO:
    """stdout, able to print anything: characters its encoding lacks (PYTHONIOENCODING=ascii,
    a C locale) are written as backslash escapes instead of ending the trace."""
    out = sys.stdout
    if out is None:
        raise ArgumentError("sigscope: standard output is closed: redirect it, e.g. to "
                            "/dev/null or a file")
    reconfigure = getattr(out, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    return out


def run_trace(args: argparse.Namespace) -> int:
    import time

    from sigscope.outputs.trace import JsonWriter, TextWriter
    from sigscope.tracer import Tracer

    filters = filters_from_args(args)
    tracer = Tracer(filters, buffer=args.buffer, buffer_size=args.buffer_size,
                    duration=args.duration, fate=args.fate,
                    follow_signalfd=args.follow_signalfd,
                    containers=bool(args.json or args.containers) and not args.ebpf,
                    host_root=args.host_root)
    out = _stdout()
    if args.ebpf:
        return _print_programs(tracer)
    writer = (JsonWriter(out) if args.json
              else TextWriter(out, args.timestamp, fate=args.fate, containers=args.containers))
    if _stopper.requested is not None:
        return EXIT_INTERRUPTED
    _stopper.on_stop(tracer.stop)
    tracer.start()
    try:
        _print_err(f"Tracing signals ({tracer.buffer_kind} buffer)... Hit Ctrl-C to end.")
        note = recipient_cgroup_note(filters)
        if note:
            _print_err(note)
        if tracer.fate_exit_codes is False:
            _print_err("sigscope: no kernel BTF: the effect of fatal signals is reported as "
                       "unknown")
        writer.header()
        reported_lost = reported_skipped = 0
        next_lost_check = 0.0

        def report_losses() -> None:
            nonlocal reported_lost, reported_skipped
            lost, skipped = tracer.lost, tracer.skipped
            if lost > reported_lost:
                writer.lost(lost - reported_lost, lost)
                reported_lost = lost
            if skipped > reported_skipped:
                writer.skipped(skipped - reported_skipped, skipped)
                reported_skipped = skipped

        # Records straight to lines where the output allows it (Decoder.render).
        as_lines = writer.renders_lines and not args.fate
        while not tracer.expired():
            if as_lines:
                writer.runs(tracer.poll_runs())
            else:
                writer.events(tracer.poll())
            now = time.monotonic()
            if now >= next_lost_check:  # reading the counters costs ~15 syscalls: not per batch
                next_lost_check = now + LOST_CHECK_INTERVAL_S
                report_losses()
            writer.flush()
        for batch in tracer.drain():
            writer.events(batch)
        report_losses()
        writer.flush()
    finally:
        tracer.close()
    if not tracer.skipped_runs_counted:
        _print_err(_SKIPPED_UNCOUNTED)
    _print_err(f"sigscope: {tracer.records} records, {tracer.lost} lost after matching the "
               f"filters, {tracer.skipped} probe runs skipped by the kernel (unknown whether "
               "they matched)" if tracer.skipped else
               f"sigscope: {tracer.records} record{'' if tracer.records == 1 else 's'}, "
               f"{tracer.lost} lost")
    return 0


def _print_programs(tracer) -> int:
    from sigscope.bpf import asm

    for name, insns in tracer.programs_text():
        print(f"; --- {name}")
        print(asm.dump(insns))
    return 0


def add_top_parser(sub, raw) -> None:
    from sigscope.top_settings import DEFAULT_INTERVAL_S, DEFAULT_MAX_KEYS, MAP_KINDS, SORT_KEYS

    top = sub.add_parser("top", help="count signals in the kernel: who signals whom, how often",
                         epilog=TOP_EXAMPLES, formatter_class=raw,
                         description="Count signals in the kernel, by sender, target, signal, "
                         "via, result and outcome, and print them every interval.")
    add_filter_options(top)
    top.add_argument("-i", "--interval", type=_interval, default=DEFAULT_INTERVAL_S,
                     metavar="SECONDS",
                     help=f"seconds between updates (default 1; {MIN_INTERVAL_S:g} to "
                          f"{MAX_INTERVAL_S:g})")
    top.add_argument("--sort", choices=SORT_KEYS, default="count", help="row order")
    top.add_argument("-n", "--rows", type=_positive_int, metavar="N",
                     help="show the top N rows (default: 20 in the table, all with --json)")
    top.add_argument("-C", "--no-clear", action="store_true",
                     help="append each table instead of redrawing the terminal")
    top.add_argument("-j", "--json", action="store_true", help="one JSON object per interval")
    top.add_argument("--prometheus", metavar="ADDR:PORT",
                     help="serve the counts on http://ADDR:PORT/metrics")
    top.add_argument("--labels", metavar="LABEL[,LABEL]",
                     help="labels of sigscope_signals_total (default: signal,via,outcome,"
                          "sender_comm,target_comm; also error, sender_pid, target_pid, "
                          "sender_container, target_container, pod_uid)")
    top.add_argument("--containers", action="store_true",
                     help="count by the sender's and the recipient's cgroup too: CONTAINER "
                          "and TCONTAINER columns, container objects in --json rows")
    top.add_argument("--table", action="store_true",
                     help="with --prometheus, print the table too")
    top.add_argument("--max-keys", type=_positive_int, default=DEFAULT_MAX_KEYS, metavar="N",
                     help=f"keys the kernel map holds (default {DEFAULT_MAX_KEYS}); more go "
                          "to 'other'")
    top.add_argument("--map-kind", choices=MAP_KINDS, default=MAP_KINDS[0],
                     help="count map: per-CPU hash (auto) or one shared hash")


def run_top(args: argparse.Namespace) -> int:
    import select
    import time

    from sigscope.outputs.prometheus import (
        CONTAINER_LABELS,
        DEFAULT_LABELS,
        parse_labels,
        parse_listen_address,
    )
    from sigscope.top import MAX_MAX_KEYS, Counter, IntervalTracker, IntervalWriter, key_fields

    if args.max_keys > MAX_MAX_KEYS:
        raise ArgumentError(f"sigscope top: argument --max-keys: at most {MAX_MAX_KEYS}")
    if args.labels is not None and not args.prometheus:
        raise ArgumentError("sigscope top: --labels needs --prometheus")
    if args.table and not args.prometheus:
        raise ArgumentError("sigscope top: --table needs --prometheus")
    labels = parse_labels(args.labels) if args.labels is not None else DEFAULT_LABELS
    if args.prometheus:
        parse_listen_address(args.prometheus)  # a bad address fails before anything is loaded
    filters = filters_from_args(args)
    show = not args.prometheus or args.table or args.json
    out = _stdout() if show else sys.stdout
    # The exporter alone needs only its labels: the kernel keys the counts by them, so a
    # node's churn of short-lived processes cannot fill the map (top.key_fields).
    # Cgroup ids in the kernel's key only when a container label or --containers asks.
    containers = args.containers or bool(
        args.prometheus and CONTAINER_LABELS.intersection(labels))
    counter = Counter(filters, max_keys=args.max_keys, map_kind=args.map_kind,
                      keep=None if show else key_fields(labels), containers=containers,
                      host_root=args.host_root)

    # A signal handler only sets a flag and writes to a pipe; the loop sleeps in select().
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping = []

    def stop() -> None:
        stopping.append(True)
        try:
            os.write(wake_write, b"x")
        except OSError:
            pass

    if _stopper.requested is not None:
        return EXIT_INTERRUPTED
    _stopper.on_stop(stop)
    server = None
    final = None
    try:
        counter.start()
        started = time.monotonic()
        where = ""
        if args.prometheus:
            from sigscope.outputs.prometheus import SignalCollector, serve

            server = serve(args.prometheus, SignalCollector(counter.exporter_snapshot, labels))
            where = f", metrics at {server.url}"
        _print_err(f"Tracing signals (counting in the kernel, up to {args.max_keys} keys"
                   f"{where})... Hit Ctrl-C to end.")
        note = recipient_cgroup_note(counter.filters)
        if note:
            _print_err(note)
        writer = IntervalWriter(out, json_output=args.json, sort=args.sort,
                                limit=args.rows, append=args.no_clear, max_keys=args.max_keys,
                                contexts=counter.container if counter.cgroups else None)
        tracker = IntervalTracker(start_monotonic=started)
        deadline = started + args.duration if args.duration else None
        next_tick = started + args.interval
        while not stopping:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wake_at = next_tick if deadline is None else min(next_tick, deadline)
            select.select([wake_read], [], [], max(0.0, wake_at - now))
            if stopping or (deadline is not None and time.monotonic() >= deadline):
                break
            if time.monotonic() >= next_tick:
                if show:
                    writer.write(tracker.next(counter.read()))
                # A slow read (huge map, busy machine) skips ticks rather than piling them up.
                next_tick = max(next_tick + args.interval, time.monotonic())
        final = counter.close()  # detached first: nothing is counted after this snapshot
        if show and final is not None:
            writer.write(tracker.next(final, final=True))
    finally:
        if server is not None:
            server.close()
        counter.close()
        os.close(wake_read)
        os.close(wake_write)
    if not counter.skipped_runs_counted:
        _print_err(_SKIPPED_UNCOUNTED)
    if final is None:
        _print_err("sigscope: 0 signals counted")
        return 0
    skipped = (f", {final.skipped} probe runs skipped by the kernel (unknown whether they "
               "matched)") if final.skipped else ""
    _print_err(f"sigscope: {final.total} signals counted, {final.other} in other, "
               f"{final.lost} lost{skipped}")
    return 0


def run_send(args: argparse.Namespace) -> int:
    from sigscope.model.signals import parse_signal
    from sigscope.send import send_signal

    _stopper.interruptible = True
    sig = parse_signal(args.signal)
    if args.via in ("kill", "rt_sigqueueinfo", "tgkill", "rt_tgsigqueueinfo",
                    "pidfd_send_signal") and args.pid is None:
        raise ArgumentError(f"sigscope send: --via {args.via} needs a target PID")
    if args.via in TID_VIAS and args.tid is None:
        raise ArgumentError(f"sigscope send: --via {args.via} needs --tid")
    if args.tid is not None and args.via not in TID_VIAS:
        # Dropping it would send to the whole process instead of the thread asked for.
        raise ArgumentError(f"sigscope send: --via {args.via} takes no thread: --tid needs "
                            f"--via {', '.join(TID_VIAS)}")
    if args.value is not None and args.via not in VALUE_VIAS:
        raise ArgumentError(f"sigscope send: --via {args.via} carries no value: --value needs "
                            f"--via {', '.join(VALUE_VIAS)}")
    send_signal(args.via, sig, pid=args.pid, tid=args.tid, value=args.value)
    return 0


def run_selftest(args: argparse.Namespace) -> int:
    from sigscope.cli.selftest import selftest

    _stopper.interruptible = True
    if _stopper.requested is not None:
        return EXIT_INTERRUPTED
    return selftest(_stdout())


if __name__ == "__main__":
    sys.exit(main())
