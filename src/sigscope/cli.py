"""The `sigscope` command: a thin shell over the Python API.

Every failure the user can cause or meet (bad input, missing privileges, no tracefs, a kernel
without BPF, a verifier rejection) ends as one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from . import __version__

_RAW = argparse.RawDescriptionHelpFormatter

EXIT_ERROR = 1
EXIT_USAGE = 2  # also: not enough privileges, as bcc tools do

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

columns: TIME PID TID COMM (sender) VIA (send path) SIG TPID TTID TCOMM (target)
  RESULT (syscall return: 0, -EPERM...; '-' for kernel-generated) OUTCOME (what the kernel
  did: delivered, ignored, already_pending, overflow, lose_info; '-' when nothing was sent).
"""

SEND_EXAMPLES = """\
examples:
  sigscope send SIGUSR2 1219543                    # kill(2)
  sigscope send --via tgkill --tid 1219543 USR2 1219543
  sigscope send --via tkill --tid 4242 TERM        # a single thread, no pid needed
  sigscope send --via rt_sigqueueinfo --value 7 RTMIN+1 1219543
  sigscope send --via pidfd_send_signal HUP 1219543
"""


class UsageError(ValueError):
    """Bad command-line input (one line)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _id_list(text: str) -> list[int]:
    return [_positive_int(item) for item in text.split(",") if item.strip()]


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16M, 512K)") from None
    if value < 4096:
        raise argparse.ArgumentTypeError("buffer size must be at least 4K")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other error
        raise UsageError(f"{self.prog}: {message}")


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """The filters shared by `trace` and `top` (applied in the kernel)."""
    p.add_argument("-p", "--pid", type=_id_list, default=[], metavar="PID[,PID]",
                   help="only signals sent by these processes")
    p.add_argument("-T", "--tpid", type=_id_list, default=[], metavar="ID[,ID]",
                   help="only signals to these processes or threads")
    p.add_argument("-s", "--signal", metavar="SIG[,SIG]",
                   help="only these signals (USR1, SIGUSR1, 10, SIGRTMIN+3, comma lists)")
    p.add_argument("-e", "--exclude-signal", metavar="SIG[,SIG]", help="leave these signals out")
    p.add_argument("-c", "--comm", help="only signals sent by this command name")
    p.add_argument("--via", metavar="VIA[,VIA]",
                   help="only these send paths: kill, tkill, tgkill, rt_sigqueueinfo, "
                        "rt_tgsigqueueinfo, pidfd_send_signal, kernel")
    p.add_argument("-x", "--failed", action="store_true", help="only sends that failed")
    p.add_argument("-k", "--kill-only", action="store_true",
                   help="syscalls only, no kernel-generated signals")
    p.add_argument("-d", "--duration", type=_duration, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("--buffer", choices=("auto", "ringbuf", "perf"), default="auto",
                   help="event transport (default: ring buffer when the kernel has it)")
    p.add_argument("--buffer-size", type=_size, default=16 << 20, metavar="SIZE",
                   help="kernel buffer size (default 16M)")


def build_parser() -> argparse.ArgumentParser:
    # `sigscope` alone is `sigscope trace`, so its help shows the trace examples too.
    parser = _Parser(prog="sigscope", description="Every signal on the system: who sent it, by "
                     "which path, to which process and thread,\nand what became of it.",
                     epilog=TRACE_EXAMPLES, formatter_class=_RAW)
    parser.add_argument("--version", action="version", version=f"sigscope {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    trace = sub.add_parser("trace", help="trace signals live (the default command)",
                           epilog=TRACE_EXAMPLES, formatter_class=_RAW,
                           description="Trace every signal: the six signal syscalls (with their "
                           "arguments and return value) and kernel-generated signals, one record "
                           "per send attempt and recipient.")
    add_filter_options(trace)
    trace.add_argument("-j", "--json", action="store_true", help="JSON Lines output")
    trace.add_argument("-t", "--timestamp", action="store_true",
                       help="relative timestamps (seconds since the first record)")
    trace.add_argument("--ebpf", action="store_true", help="print the BPF programs and exit")

    send = sub.add_parser("send", help="send a signal through any of the six syscalls",
                          epilog=SEND_EXAMPLES, formatter_class=_RAW)
    send.add_argument("--via", default="kill",
                      choices=("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
                               "pidfd_send_signal"))
    send.add_argument("--tid", type=_positive_int, help="target thread (tkill, tgkill, "
                      "rt_tgsigqueueinfo)")
    send.add_argument("--value", type=lambda s: int(s, 0), help="sigval for the sigqueue variants "
                      "and pidfd_send_signal")
    send.add_argument("signal", help="signal name or number")
    send.add_argument("pid", nargs="?", type=int, help="target process")

    sub.add_parser("selftest", help="load a probe, send ourselves signals, check they are seen")
    return parser


COMMANDS = ("trace", "send", "selftest")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in
                         ("-h", "--help", "--version")):
        args_list.insert(0, "trace")
    try:
        args = build_parser().parse_args(args_list)
        handler: Callable[[argparse.Namespace], int] = {
            "trace": run_trace, "send": run_send, "selftest": run_selftest,
        }[args.command]
        return handler(args)
    except UsageError as err:
        print(f"{err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as err:  # noqa: BLE001 — the user sees one line, never a traceback
        return _report(err)


def _quiet_stdout() -> None:
    # Python would complain about the broken pipe once more when flushing at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _report(err: BaseException) -> int:
    from .bpf.privileges import PrivilegeError

    if os.environ.get("SIGSCOPE_DEBUG"):
        raise err
    message = str(err) or type(err).__name__
    print(f"sigscope: error: {message}", file=sys.stderr)
    return EXIT_USAGE if isinstance(err, (PrivilegeError, ValueError)) else EXIT_ERROR


def filters_from_args(args: argparse.Namespace):
    from .filters import Filters
    from .signals import parse_signal_list
    from .tracer import make_filters

    vias = None
    if args.via:
        vias = [v.strip() for v in args.via.split(",") if v.strip()]
    filters: Filters = make_filters(
        signals=parse_signal_list(args.signal) if args.signal else None,
        exclude_signals=parse_signal_list(args.exclude_signal) if args.exclude_signal else None,
        pids=args.pid, target_ids=args.tpid, comm=args.comm, vias=vias,
        failed_only=args.failed, kill_only=args.kill_only,
    )
    return filters


def _install_stop_handlers(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: object) -> None:
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_trace(args: argparse.Namespace) -> int:
    from .output import JsonWriter, TextWriter
    from .tracer import Tracer

    filters = filters_from_args(args)
    tracer = Tracer(filters, buffer=args.buffer, buffer_size=args.buffer_size,
                    duration=args.duration)
    if args.ebpf:
        return _print_programs(tracer)
    writer = JsonWriter(sys.stdout) if args.json else TextWriter(sys.stdout, args.timestamp)
    _install_stop_handlers(tracer.stop)
    tracer.start()
    try:
        print(f"Tracing signals ({tracer.buffer_kind} buffer)... Hit Ctrl-C to end.",
              file=sys.stderr, flush=True)
        writer.header()
        reported_lost = 0
        while not tracer.expired():
            events = tracer.poll()
            writer.events(events)
            lost = tracer.lost
            if lost > reported_lost:
                writer.lost(lost - reported_lost, lost)
                reported_lost = lost
            writer.flush()
        writer.events(tracer.close())
        lost = tracer.lost
        if lost > reported_lost:
            writer.lost(lost - reported_lost, lost)
        writer.flush()
    finally:
        tracer.close()
    print(f"sigscope: {tracer.records} records, {tracer.lost} lost", file=sys.stderr)
    return 0


def _print_programs(tracer) -> int:
    from .bpf import asm

    for name, insns in tracer.programs_text():
        print(f"; --- {name}")
        print(asm.dump(insns))
    return 0


def run_send(args: argparse.Namespace) -> int:
    from .send import send_signal
    from .signals import parse_signal

    sig = parse_signal(args.signal)
    if args.via in ("kill", "rt_sigqueueinfo", "tgkill", "rt_tgsigqueueinfo",
                    "pidfd_send_signal") and args.pid is None:
        raise UsageError(f"sigscope send: --via {args.via} needs a target PID")
    if args.via in ("tkill", "tgkill", "rt_tgsigqueueinfo") and args.tid is None:
        raise UsageError(f"sigscope send: --via {args.via} needs --tid")
    send_signal(args.via, sig, pid=args.pid, tid=args.tid, value=args.value)
    return 0


def run_selftest(args: argparse.Namespace) -> int:
    from .selftest import selftest

    return selftest(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
