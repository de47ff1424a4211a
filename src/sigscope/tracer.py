"""The Python API: ``sigscope.trace(...)`` loads the probes and yields Events.

    import sigscope
    with sigscope.trace(signals={10}, duration=5) as tracer:
        for event in tracer:
            print(event.to_dict())
    print(tracer.records, tracer.lost)

Everything the tracer creates (programs, maps, perf events, links) is owned by file descriptors
of this process: closing the tracer, or the process dying in any way, leaves nothing behind.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias

from sigscope.bpf import arch, features
from sigscope.bpf.maps import (
    HashMap,
    Map,
    PerCPUArrayMap,
    PerfEventArrayMap,
    RingBufMap,
    StackTraceMap,
)
from sigscope.bpf.readers.perfbuf import PerfBufReader
from sigscope.bpf.readers.ringbuf import RingBufReader
from sigscope.bpf.tracefs import event_format
from sigscope.decode import Decoder
from sigscope.errors import KernelError, SigscopeError, UsageError
from sigscope.kstack import KernelStacks
from sigscope.model import record as rec
from sigscope.model.event import Event, Runs
from sigscope.model.filters import Filters, make_filters
from sigscope.programs import signal as probes
from sigscope.programs.common import (
    COUNTER_INFLIGHT_FULL,
    COUNTER_LOST,
    NUM_COUNTERS,
    Output,
    PerfOutput,
    ProgramPlan,
    RingbufOutput,
    Role,
)
from sigscope.programs.origin import STACK_DEPTH, STACK_MAP_ENTRIES
from sigscope.programs.task import task_layout
from sigscope.session import ProbeSession
from sigscope.trace_settings import BUFFER_KINDS, DEFAULT_BUFFER_SIZE, DEFAULT_POLL_INTERVAL_MS

if TYPE_CHECKING:
    from sigscope.containers import ContainerLookup
    from sigscope.fate import Fate, FateTracker

__all__ = ["BUFFER_KINDS", "DEFAULT_BUFFER_SIZE", "TraceError", "TraceItem", "Tracer",
           "make_filters", "trace"]

# What a Tracer yields: Events, and with fate=True also the Fates of queued signals (after
# their Event). One declared type whatever the flag: callers tell them apart by isinstance.
TraceItem: TypeAlias = "Event | Fate"

# At most this much of the ring buffer is decoded per poll: in a storm the ring is always full,
# and decoding it whole would hold ~100k Events and their JSON in memory at once. Kept below
# glibc's mmap threshold, so the batch's buffer is reused rather than faulted in afresh.
BATCH_BYTES = 96 << 10
_PAGE_SIZE = 4096
# --fate: a fate record is matched once every signal generated before it has been read. Records
# of the last FATE_SLACK_NS may still be in flight; a call parked longer than FATE_MAX_HOLD_NS
# (stale) no longer holds fates back.
FATE_SLACK_NS = 5_000_000
FATE_MAX_HOLD_NS = 2_000_000_000
# The in-flight scan reads the whole per-thread map: at most this often (an older scan still
# gives a correct, only earlier, horizon).
FATE_SCAN_INTERVAL_NS = 20_000_000


class TraceError(SigscopeError, RuntimeError):
    """Tracing could not start or continue; str() is one line for the user."""


# Bounds of `duration` (seconds): finite, and short of the float precision of a deadline.
MIN_DURATION_S = 0.001
MAX_DURATION_S = 1e9
MAX_BUFFER_SIZE = 1 << 30


def _pow2_floor(value: int) -> int:
    return 1 << (max(1, value).bit_length() - 1)


class Tracer(ProbeSession):
    """Loads the signal probes, reads their records and decodes them into Events."""

    def __init__(
        self,
        filters: Filters | None = None,
        buffer: str = "auto",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        duration: float | None = None,
        poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS,
        fate: bool = False,
        follow_signalfd: bool = True,
        claim: str | None = None,
        containers: bool | ContainerLookup = True,
        host_root: str = "/",
        entry_probes: bool | None = None,
    ) -> None:
        super().__init__(claim)
        # True: the three-probe path (sys_enter_<call> probes) even where the kernel allows
        # two (session.ProbeSession.entry_probes); None: that class default (False).
        if entry_probes is not None:
            self.entry_probes = bool(entry_probes)
        # Read the recipient from its task (tp_btf) where the kernel allows; False forces the
        # tracefs signal_generate and its /proc fallback (tests of that path).
        self.recipient_task = True
        # --fate: follow signalfd reads (programs/fate_signalfd.py). Costs every read(2) on
        # the system ~1.7 us while tracing (measured here): two more syscall tracepoints.
        self.follow_signalfd = follow_signalfd
        if buffer not in BUFFER_KINDS:
            choices = ", ".join(BUFFER_KINDS)
            raise UsageError(f"buffer={buffer!r} is unknown: choose from {choices}")
        if not isinstance(buffer_size, int) or buffer_size < _PAGE_SIZE:
            raise UsageError(f"buffer_size={buffer_size!r} is smaller than a page (4096 bytes)")
        if buffer_size > MAX_BUFFER_SIZE:
            raise UsageError(f"buffer_size={buffer_size!r} is above 1G ({MAX_BUFFER_SIZE} bytes)")
        if duration is not None and not (
                isinstance(duration, (int, float)) and math.isfinite(duration)
                and MIN_DURATION_S <= duration <= MAX_DURATION_S):
            raise UsageError(f"duration={duration!r} must be a finite number of seconds from "
                             f"{MIN_DURATION_S:g} to {MAX_DURATION_S:g}")
        self.filters = filters or Filters()
        self.buffer_kind = buffer
        self.buffer_size = buffer_size
        self.duration = duration
        self.poll_interval_ms = poll_interval_ms
        self.decoder = Decoder()
        # Container context of both sides (Event.sender_container, target_container, the
        # JSON "container" objects): resolved in user space from the cgroup ids the kernel
        # read at the event, cached per id (containers.ContainerLookup). False: not looked up.
        # True: made at start(), after loading (its imports are not start-up's).
        self._want_containers = containers is True
        self.host_root = host_root  # where LocalNames reads the host's /var (containers.py)
        self.containers: ContainerLookup | None = (
            None if isinstance(containers, bool) else containers)
        self.decoder.contexts = self.containers
        # --fate: follow each signal to its end; iteration then also yields Fate objects.
        self.fate = fate
        self.fate_tracker: FateTracker | None = None
        if fate:  # imported only when asked for: start-up time
            from sigscope.fate import FateTracker

            self.fate_tracker = FateTracker(self.decoder.wall_offset_ns)
        self.fate_exit_codes: bool | None = None  # False: no BTF, deaths are "unknown"
        self.fate_exit_source: str | None = None  # programs/fate.py EXIT_*, once started
        self._fate_scan: tuple[int, int] = (0, 0)  # (when, horizon) of the last in-flight scan
        self._reader: RingBufReader | PerfBufReader | None = None
        self._counters: PerCPUArrayMap | None = None
        self._stop = False
        self._deadline: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Tracer:
        """Check privileges, build and attach the probes. Raises one-line errors."""
        if not self.started:
            super().start()
            if self._want_containers and self.containers is None:
                from sigscope.containers import ContainerLookup

                self.containers = self.decoder.contexts = ContainerLookup(
                    host_root=self.host_root)
            if self.containers is not None:
                # After attaching: a cgroup made from now on is found by its id (handle or
                # rescan); one that exists now is remembered even if it goes before its
                # first record is read. On a cgroup v1-only host: one line on stderr.
                self.containers.start()
            if self.duration is not None:
                self._deadline = time.monotonic() + self.duration
        return self

    def _setup(self) -> None:
        kind = self.buffer_kind
        if kind == "auto":
            kind = "ringbuf" if features.has("ringbuf") else "perf"
        self.buffer_kind = kind
        inflight = self._own_inflight_map()
        counters = self._own(PerCPUArrayMap(8, NUM_COUNTERS, name="sigscope_count"))
        self._counters = counters
        if kind == "ringbuf":
            size = _pow2_floor(self.buffer_size // _PAGE_SIZE) * _PAGE_SIZE
            try:
                events: Map = self._own(RingBufMap(size, name="sigscope_events"))
            except OSError as err:
                raise KernelError(f"the kernel cannot allocate a {size >> 10}K ring buffer: "
                                  f"{os.strerror(err.errno or errno.ENOMEM)} (a smaller "
                                  "buffer_size= may fit)") from None
            output: Output = RingbufOutput(events.fd, counters.fd)
        else:
            events = self._own(PerfEventArrayMap(name="sigscope_events"))
            output = PerfOutput(events.fd, counters.fd)
        stacks = (self._own(StackTraceMap(STACK_MAP_ENTRIES, max_depth=STACK_DEPTH,
                                          name="sigscope_stacks"))
                  if self._wants_kill_origins() else None)
        if stacks is not None:
            self.decoder.stacks = KernelStacks(stacks)
        cfg = probes.ProbeConfig(self.filters, output,
                                 probes.MapFds(inflight.fd, counters.fd,
                                               stacks.fd if stacks is not None else -1),
                                 claim=self._started_claim, task=task_layout(),
                                 recipient_task=self.recipient_task,
                                 entry_probes=self.entry_probes)
        # The reader first: a perf buffer's per-CPU events must be in the map before any
        # program writes to it.
        if kind == "ringbuf":
            self._reader = RingBufReader(events)  # type: ignore[arg-type]
        else:
            ncpu = max(1, arch.possible_cpus())
            pages = _pow2_floor(self.buffer_size // _PAGE_SIZE // ncpu)
            self._reader = PerfBufReader(events, pages_per_cpu=pages)  # type: ignore[arg-type]
        plans = list(self._fate_plans(cfg)) if self.fate else []  # first: no delivery missed
        self._load_and_attach(itertools.chain(plans, probes.signal_probe_plans(cfg, prefix="s")))
        if self.fate_tracker is not None:
            self.fate_tracker.sigcont_states = self._attach_sigcont_state(cfg)

    def _attach_sigcont_state(self, cfg: probes.ProbeConfig) -> bool:
        """--fate: the raw signal_generate program telling whether a SIGCONT resumed a
        stopped process (programs/fate_cont.py). False without BTF or raw tracepoints: the
        effect of an ignored SIGCONT is then "unknown"."""
        from sigscope.bpf.attach import attach_raw_tracepoint
        from sigscope.bpf.program import Program
        from sigscope.bpf.syscall import BPFError
        from sigscope.bpf.uapi import BPF_PROG_TYPE_RAW_TRACEPOINT
        from sigscope.programs import fate_cont

        layout = fate_cont.cont_layout()
        if layout is None:
            return False
        try:
            prog = Program.load(fate_cont.build_sigcont_state(cfg, layout),
                                prog_type=BPF_PROG_TYPE_RAW_TRACEPOINT, name="fate_sigcont")
        except BPFError:
            return False
        self._programs.append(prog)
        try:
            self._attachments.append(
                (Role.FATE, attach_raw_tracepoint(prog, fate_cont.RAW_TRACEPOINT)))
        except BPFError:
            return False
        return True

    def _wants_kill_origins(self) -> bool:
        """Kernel-generated SIGKILLs are traced: take their kernel stacks (their origin)."""
        return self.filters.include_kernel and self.filters.wants_signal(9)

    def programs_text(self) -> list[tuple[str, list]]:
        """(name, instructions) of every probe, for `--ebpf` (built with placeholder map fds,
        nothing is loaded)."""
        kind = self.buffer_kind if self.buffer_kind != "auto" else "ringbuf"
        output = (RingbufOutput if kind == "ringbuf" else PerfOutput)(-2, -3)
        cfg = probes.ProbeConfig(self.filters, output, probes.MapFds(
            -1, -3, -4 if self._wants_kill_origins() else -1),
            claim=self.claim or probes.inflight_claim(), task=task_layout(),
            recipient_task=self.recipient_task, entry_probes=self.entry_probes)
        plans = itertools.chain(self._fate_plans(cfg) if self.fate else [],
                                probes.signal_probe_plans(cfg))
        return [(", ".join(event for _, event in plan.tracepoints), plan.insns)
                for plan in plans]

    def _fate_plans(self, cfg: probes.ProbeConfig) -> list[ProgramPlan]:
        """The --fate programs. The exit code's offset in task_struct (and how the exit
        program knows a thread group died, fate_exit_source) come from the kernel's BTF and
        the tracepoint's format; without BTF deaths are reported as "unknown"
        (fate_exit_codes is False)."""
        from sigscope.programs import fate as fate_probes

        layout = fate_probes.exit_layout()
        self.fate_exit_codes = layout is not None
        formats = {event: event_format(system, event)
                   for _, system, event in fate_probes.FATE_TRACEPOINTS}
        self.fate_exit_source = fate_probes.exit_source(formats["sched_process_exit"], layout)
        plans = [ProgramPlan(name, Role.FATE, ((system, event),), insns)
                 for name, system, event, insns in
                 fate_probes.build_fate_programs(cfg, formats, layout)]
        return plans + self._signalfd_plans(cfg)

    def _signalfd_plans(self, cfg: probes.ProbeConfig) -> list[ProgramPlan]:
        """--fate: the programs following signalfd reads (programs/fate_signalfd.py); none
        without BTF, kallsyms or the tracepoints (signalfd reads then stay unfollowed)."""
        from sigscope.bpf.tracefs import available
        from sigscope.programs import fate_signalfd as sfd

        if not self.follow_signalfd:
            return []
        layout = sfd.signalfd_layout()
        if layout is None or cfg.maps.inflight < 0:  # (--ebpf dumps show the other programs)
            return []
        present = [(name, system, event) for name, system, event in sfd.TRACEPOINTS
                   if available(system, event)]
        if not any(event == "sys_enter_read" for _, _, event in present):
            return []
        maps = sfd.SignalfdMaps(self._own(HashMap(*sfd.SFDS_MAP, name="sigscope_sfds")).fd,
                                self._own(HashMap(*sfd.READS_MAP, name="sigscope_sfdrd")).fd)
        plans = []
        for name, system, event in present:
            fmt = event_format(system, event)
            if event == "sys_enter_read":
                insns = sfd.build_read_enter(maps, fmt, layout)
            elif event == "sys_exit_read":
                insns = sfd.build_read_exit(cfg, maps, fmt)
            else:
                insns = sfd.build_signalfd_exit(maps, fmt)
            plans.append(ProgramPlan(name, Role.FATE, ((system, event),), insns))
        return plans

    def stop(self) -> None:
        """Ask the iteration to end (safe from a signal handler); pending events still drain."""
        self._stop = True

    def close(self) -> list[TraceItem]:
        """Detach, drain what the kernel already wrote, release everything. Returns the
        drained events (iteration yields them itself, batch by batch)."""
        drained: list[TraceItem] = []
        for batch in self.drain():
            drained += batch
        return drained

    def drain(self) -> Iterator[list[TraceItem]]:
        """Detach the probes, then yield what they wrote before, in batches (so a full buffer
        never has to be held in memory at once), then release everything."""
        if self.finished:
            return
        try:
            self._detach()
            if self.started:
                reader = self._reader
                while reader is not None:
                    batch = reader.read(rec.RECORD_SIZE, BATCH_BYTES)
                    if not batch:
                        break
                    yield self._decode(batch, None)
                events = self.decoder.flush()
                flushed: list[TraceItem] = list(events)
                if self.fate_tracker is not None:
                    self.fate_tracker.add_events(events)
                    flushed += self.fate_tracker.finish(time.monotonic_ns())
                yield flushed
                self._final_lost = self._lost_now()
                self._final_skipped = self._skipped_now()
        finally:
            self._teardown()
            self.finished = True

    def _teardown(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super()._teardown()

    def __enter__(self) -> Tracer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def _decode(self, batch: bytes, horizon_ns: int | None) -> list[TraceItem]:
        """Events of a batch; with --fate, also the fates known up to the horizon."""
        tracker = self.fate_tracker
        if tracker is None:
            return list(self.decoder.decode(batch))
        from sigscope.fate import FateRecord

        events, fate_rows = self.decoder.decode_with_fates(batch)
        tracker.add_events(events)
        tracker.add_records([FateRecord.from_row(row) for row in fate_rows])
        out: list[TraceItem] = list(events)
        if horizon_ns is not None:
            out += tracker.advance(horizon_ns)
        return out

    def _fate_horizon(self) -> int:
        """A kernel time before which every signal record has been written to the buffer:
        now (less a slack for writes in progress), or the entry time of the oldest signal
        syscall still in flight (its record is written at its exit). Taken before reading."""
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        scanned_at, scanned_horizon = self._fate_scan
        tracker = self.fate_tracker
        if now - scanned_at < FATE_SCAN_INTERVAL_NS or (tracker is not None and not tracker.held):
            # Recent enough; or nothing held back, and so nothing the horizon would release.
            return scanned_horizon
        horizon = now - FATE_SLACK_NS
        inflight = self._inflight
        if inflight is not None and not inflight.closed:
            kind_at, call_at = rec.offset("kind"), rec.offset("call_id")
            try:
                parked = inflight.lookup_batch()
            except OSError:
                parked = []
            for _key, value in parked:
                kind = int.from_bytes(value[kind_at:kind_at + 4], "little")
                if kind == rec.KIND_CALL:
                    entered = int.from_bytes(value[call_at:call_at + 8], "little")
                    if entered > now - FATE_MAX_HOLD_NS:
                        horizon = min(horizon, entered)
        waiting = self.decoder.oldest_waiting_ktime()
        if waiting is not None and waiting > now - FATE_MAX_HOLD_NS:
            horizon = min(horizon, waiting)
        self._fate_scan = (now, horizon)
        return horizon

    def poll(self, timeout_ms: int | None = None) -> list[TraceItem]:
        """Wait up to timeout_ms for records and return the events decoded from them (with
        --fate, followed by the Fates that became known)."""
        if self._reader is None:
            return []
        if timeout_ms is None:
            timeout_ms = self.poll_interval_ms
        self._reader.poll(timeout_ms)
        horizon = self._fate_horizon() if self.fate_tracker is not None else None
        batch = self._reader.read(rec.RECORD_SIZE, BATCH_BYTES)
        if not batch:
            if self.fate_tracker is not None and horizon is not None:
                return list(self.fate_tracker.advance(horizon))
            return []
        return self._decode(batch, horizon)

    def poll_runs(self, timeout_ms: int | None = None) -> Runs:
        """poll(), as Decoder.runs(): consecutive equal records as runs of one Shape, for an
        output's render() (the storm path of `trace --json` and the plain table). Not with fate
        (fates need the Events): raises TraceError."""
        if self.fate_tracker is not None:
            raise TraceError("poll_runs() is not available with fate=True: use poll()")
        if self._reader is None:
            return self.decoder.runs(b"")
        self._reader.poll(self.poll_interval_ms if timeout_ms is None else timeout_ms)
        return self.decoder.runs(self._reader.read(rec.RECORD_SIZE, BATCH_BYTES))

    def expired(self) -> bool:
        return self._stop or (self._deadline is not None and time.monotonic() >= self._deadline)

    def __iter__(self) -> Iterator[TraceItem]:
        self.start()
        while not self.expired():
            timeout = self.poll_interval_ms
            if self._deadline is not None:
                left_ms = int((self._deadline - time.monotonic()) * 1000)
                timeout = max(0, min(timeout, left_ms))
            yield from self.poll(timeout)
        for batch in self.drain():
            yield from batch

    # --- accounting ------------------------------------------------------------------------

    @property
    def records(self) -> int:
        return self.decoder.records

    def _lost_now(self) -> int:
        lost = 0
        if self._counters is not None and not self._counters.closed:
            for index in (COUNTER_LOST, COUNTER_INFLIGHT_FULL):
                lost += self._counters.sum_u64(struct.pack("<I", index))
        # Not self._reader.lost: a perf buffer's PERF_RECORD_LOST counts the same failed writes
        # the programs count themselves (and arrives late, or never for the last ones).
        return lost + self._unfinished

    def _skipped_now(self) -> int:
        return self.skipped_runs or 0

    @property
    def lost(self) -> int:
        """Records that passed the filters the probes apply first but that the kernel could
        not hand us: buffer full, in-flight map full, calls still in flight when the probes
        were detached."""
        if self.finished:
            return getattr(self, "_final_lost", 0)
        return self._lost_now()

    @property
    def skipped(self) -> int:
        """Probe runs the kernel skipped because another BPF program was running on that CPU
        (bpf_prog_info.recursion_misses, summed over our programs). A skipped run never saw
        its event, so whether it would have matched the filters is unknown: not in ``lost``."""
        if self.finished:
            return getattr(self, "_final_skipped", 0)
        return self._skipped_now()


def trace(
    signals: Iterable[int] | str | None = None,
    exclude_signals: Iterable[int] | str | None = None,
    pids: Iterable[int] = (),
    target_ids: Iterable[int] = (),
    comm: str | None = None,
    vias: Iterable[str] | str | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
    buffer: str = "auto",
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    duration: float | None = None,
    fate: bool = False,
    follow_signalfd: bool = True,
    containers: bool = True,
    cgroups: Iterable[tuple[int, int]] = (),
    host_root: str = "/",
    entry_probes: bool | None = None,
) -> Tracer:
    """A Tracer with the same filters as the ``sigscope trace`` command line.

    ``signals``/``exclude_signals`` take numbers or a spec like "USR1,SIGRTMIN+3";
    ``vias`` names send paths (kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo,
    pidfd_send_signal, kernel), as names or one comma list; ``kill_only`` drops
    kernel-generated signals. Filters that cannot match anything, and bad values (a
    non-finite ``duration``, a ``buffer_size`` above 1G), raise ``sigscope.errors.UsageError``
    naming the parameter.
    With ``fate=True`` (``--fate``) iteration also yields a ``sigscope.fate.Fate`` for each
    queued signal once its end is known (and sets ``event.fate``); see fate.py.
    ``follow_signalfd=False`` leaves signalfd reads unfollowed (their signals' fates are then
    ``unknown`` or ``discarded``) and spares every read(2) on the system the ~1.7 us the two
    read tracepoints cost while tracing.
    ``containers=True`` (the default) resolves each side's cgroup id to its container context
    (``event.sender_container``, ``event.target_container``, the JSON ``container`` objects;
    docs/CONTAINERS.md); on a cgroup v1-only host that says one line on stderr at start and
    the contexts are None.
    ``cgroups``: (cgroup v2 id, level) pairs (``sigscope.cgroup_filter.of_path`` and
    ``of_container``); a signal matches when its sender's or recipient's cgroup is one of
    them or below one. ``host_root``: the directory the container names' files are read
    under (``--host-root``). ``entry_probes=True`` attaches the sys_enter probes even where
    the kernel allows two programs per signal (``Tracer``).
    """
    return Tracer(
        make_filters(signals, exclude_signals, pids, target_ids, comm, vias, failed_only,
                     kill_only, cgroups),
        buffer=buffer, buffer_size=buffer_size, duration=duration, fate=fate,
        follow_signalfd=follow_signalfd, containers=containers, host_root=host_root,
        entry_probes=entry_probes,
    )

