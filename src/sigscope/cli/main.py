"""The `sigscope` command: a thin shell over the Python API.

Every failure the user can cause or meet (bad input, missing privileges, no tracefs, a kernel
without BPF, a verifier rejection) ends as one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from sigscope import __version__

_RAW = argparse.RawDescriptionHelpFormatter

LOST_CHECK_INTERVAL_S = 0.1
# Said once, with the summary, where the kernel has no bpf_prog_info.recursion_misses (< 5.12).
_SKIPPED_UNCOUNTED = ("sigscope: this kernel cannot count the probe runs it skipped (no "
                      "recursion_misses before Linux 5.12): 'lost' leaves them out")
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

--fate follows each queued signal to its end. Each send is printed at once with its ID (#17)
and FATE '...'; its fate follows as its own line when known, tied by the id ('->#17'): PID TID
COMM there are the thread that took the signal, LAT the time from generation to delivery, FATE
the effect (handled <address> <flags>, ignored, stopped, continued, terminated, core_dumped,
consumed, flushed, discarded, unknown) and a death's cause, e.g. 'terminated (SIGTERM)'. Fate
lines trail their deliveries by a few milliseconds; a signal still queued when tracing ends is
reported then as 'pending'. Real-time signals are matched first in, first out. With -j the fate
is a {"type": "fate"} record with the signal record's "id".
"""

TOP_EXAMPLES = """\
examples:
  sigscope top                      # who signals whom, every second, busiest first
  sigscope top -c oracle -i 5 -C    # sends by 'oracle' processes, 5 s intervals, appended
  sigscope top --sort target -n 50  # 50 rows, grouped by target
  sigscope top -j -d 60             # one JSON object per interval, for a minute
  sigscope top --prometheus :9567   # serve /metrics (no table unless --table or --json)
  sigscope top --prometheus 127.0.0.1:9567 --labels signal,via,sender_comm

Counts are kept in the kernel (a BPF hash map of at most --max-keys keys, default 10240): no
per-signal record reaches user space. Keys that do not fit are counted in "other". On exit a last,
partial interval is printed, so the intervals add up to every signal seen.
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
    trace.add_argument("--buffer", choices=("auto", "ringbuf", "perf"), default="auto",
                       help="event transport (default: ring buffer when the kernel has it)")
    trace.add_argument("--buffer-size", type=_size, default=16 << 20, metavar="SIZE",
                       help="kernel buffer size (default 16M)")
    trace.add_argument("-j", "--json", action="store_true", help="JSON Lines output")
    trace.add_argument("-t", "--timestamp", action="store_true",
                       help="relative timestamps (seconds since the first record)")
    trace.add_argument("--ebpf", action="store_true", help="print the BPF programs and exit")
    trace.add_argument("--fate", action="store_true",
                       help="also report what became of each signal: delivery (thread, latency, "
                            "disposition), effect, cause of death (see below)")

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

    add_top_parser(sub)
    return parser


COMMANDS = ("trace", "top", "send", "selftest")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in
                         ("-h", "--help", "--version")):
        args_list.insert(0, "trace")
    try:
        args = build_parser().parse_args(args_list)
        handler: Callable[[argparse.Namespace], int] = {
            "trace": run_trace, "top": run_top, "send": run_send, "selftest": run_selftest,
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
    from sigscope.bpf.privileges import PrivilegeError

    if os.environ.get("SIGSCOPE_DEBUG"):
        log = getattr(err, "log", "")  # a VerifierError's full verifier log: only on request
        if log:
            print(log, file=sys.stderr)
        raise err
    message = str(err) or type(err).__name__
    print(f"sigscope: error: {message}", file=sys.stderr)
    return EXIT_USAGE if isinstance(err, (PrivilegeError, ValueError)) else EXIT_ERROR


def filters_from_args(args: argparse.Namespace):
    from sigscope.model.filters import Filters
    from sigscope.model.signals import parse_signal_list
    from sigscope.tracer import make_filters

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
    from sigscope.outputs.trace import JsonWriter, TextWriter
    from sigscope.tracer import Tracer

    filters = filters_from_args(args)
    tracer = Tracer(filters, buffer=args.buffer, buffer_size=args.buffer_size,
                    duration=args.duration, fate=args.fate)
    if args.ebpf:
        return _print_programs(tracer)
    writer = (JsonWriter(sys.stdout) if args.json
              else TextWriter(sys.stdout, args.timestamp, fate=args.fate))
    _install_stop_handlers(tracer.stop)
    tracer.start()
    try:
        print(f"Tracing signals ({tracer.buffer_kind} buffer)... Hit Ctrl-C to end.",
              file=sys.stderr, flush=True)
        if tracer.fate_exit_codes is False:
            print("sigscope: no kernel BTF: the effect of fatal signals is reported as unknown",
                  file=sys.stderr, flush=True)
        writer.header()
        reported_lost = 0
        next_lost_check = 0.0
        # Records straight to lines where the output allows it (Decoder.render).
        as_lines = writer.renders_lines and not args.fate
        while not tracer.expired():
            if as_lines:
                writer.lines(tracer.poll_lines(writer))
            else:
                writer.events(tracer.poll())
            now = time.monotonic()
            if now >= next_lost_check:  # reading the counters costs ~15 syscalls: not per batch
                next_lost_check = now + LOST_CHECK_INTERVAL_S
                lost = tracer.lost
                if lost > reported_lost:
                    writer.lost(lost - reported_lost, lost)
                    reported_lost = lost
            writer.flush()
        for batch in tracer.drain():
            writer.events(batch)
        lost = tracer.lost
        if lost > reported_lost:
            writer.lost(lost - reported_lost, lost)
        writer.flush()
    finally:
        tracer.close()
    if not tracer.skipped_runs_counted:
        print(_SKIPPED_UNCOUNTED, file=sys.stderr)
    print(f"sigscope: {tracer.records} records, {tracer.lost} lost", file=sys.stderr)
    return 0


def _print_programs(tracer) -> int:
    from sigscope.bpf import asm

    for name, insns in tracer.programs_text():
        print(f"; --- {name}")
        print(asm.dump(insns))
    return 0


def add_top_parser(sub) -> None:
    from sigscope.top_settings import DEFAULT_MAX_KEYS, MAP_KINDS, SORT_KEYS

    top = sub.add_parser("top", help="count signals in the kernel: who signals whom, how often",
                         epilog=TOP_EXAMPLES, formatter_class=_RAW,
                         description="Count signals in the kernel, by sender, target, signal, "
                         "via, result and outcome, and print them every interval.")
    add_filter_options(top)
    top.add_argument("-i", "--interval", type=_duration, default=1.0, metavar="SECONDS",
                     help="seconds between updates (default 1)")
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
                          "sender_comm,target_comm; also error, sender_pid, target_pid)")
    top.add_argument("--table", action="store_true",
                     help="with --prometheus, print the table too")
    top.add_argument("--max-keys", type=_positive_int, default=DEFAULT_MAX_KEYS, metavar="N",
                     help=f"keys the kernel map holds (default {DEFAULT_MAX_KEYS}); more go "
                          "to 'other'")
    top.add_argument("--map-kind", choices=MAP_KINDS, default="auto",
                     help="count map: per-CPU hash (auto) or one shared hash")


def run_top(args: argparse.Namespace) -> int:
    import select
    import time

    from sigscope.outputs.prometheus import DEFAULT_LABELS, parse_labels, parse_listen_address
    from sigscope.top import MAX_MAX_KEYS, Counter, IntervalTracker, IntervalWriter

    if args.max_keys > MAX_MAX_KEYS:
        raise UsageError(f"sigscope top: --max-keys is at most {MAX_MAX_KEYS}")
    if args.labels is not None and not args.prometheus:
        raise UsageError("sigscope top: --labels needs --prometheus")
    if args.table and not args.prometheus:
        raise UsageError("sigscope top: --table needs --prometheus")
    labels = parse_labels(args.labels) if args.labels is not None else DEFAULT_LABELS
    if args.prometheus:
        parse_listen_address(args.prometheus)  # a bad address fails before anything is loaded
    filters = filters_from_args(args)
    counter = Counter(filters, max_keys=args.max_keys, map_kind=args.map_kind)

    # A signal handler only sets a flag and writes to a pipe; the loop sleeps in select().
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping = []

    def stop() -> None:
        stopping.append(True)
        try:
            os.write(wake_write, b"x")
        except OSError:
            pass

    _install_stop_handlers(stop)
    server = None
    show = not args.prometheus or args.table or args.json
    try:
        counter.start()
        started = time.monotonic()
        where = ""
        if args.prometheus:
            from sigscope.outputs.prometheus import SignalCollector, serve

            server = serve(args.prometheus, SignalCollector(counter.exporter_snapshot, labels))
            where = f", metrics at {server.url}"
        print(f"Tracing signals (counting in the kernel, up to {args.max_keys} keys{where})... "
              "Hit Ctrl-C to end.", file=sys.stderr, flush=True)
        writer = IntervalWriter(sys.stdout, json_output=args.json, sort=args.sort,
                                limit=args.rows, append=args.no_clear, max_keys=args.max_keys)
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
    total = final.total if final is not None else 0
    print(f"sigscope: {total} signals counted, {final.other if final else 0} in other, "
          f"{final.lost if final else 0} lost", file=sys.stderr)
    if not counter.skipped_runs_counted:
        print(_SKIPPED_UNCOUNTED, file=sys.stderr)
    return 0


def run_send(args: argparse.Namespace) -> int:
    from sigscope.model.signals import parse_signal
    from sigscope.send import send_signal

    sig = parse_signal(args.signal)
    if args.via in ("kill", "rt_sigqueueinfo", "tgkill", "rt_tgsigqueueinfo",
                    "pidfd_send_signal") and args.pid is None:
        raise UsageError(f"sigscope send: --via {args.via} needs a target PID")
    if args.via in ("tkill", "tgkill", "rt_tgsigqueueinfo") and args.tid is None:
        raise UsageError(f"sigscope send: --via {args.via} needs --tid")
    send_signal(args.via, sig, pid=args.pid, tid=args.tid, value=args.value)
    return 0


def run_selftest(args: argparse.Namespace) -> int:
    from sigscope.cli.selftest import selftest

    return selftest(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
