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

import itertools
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from sigscope.bpf import arch, features
from sigscope.bpf.maps import Map, PerCPUArrayMap, PerfEventArrayMap, RingBufMap
from sigscope.bpf.readers.perfbuf import PerfBufReader
from sigscope.bpf.readers.ringbuf import RingBufReader
from sigscope.bpf.tracefs import event_format
from sigscope.decode import Decoder, LineRenderer
from sigscope.model import record as rec
from sigscope.model.event import Event
from sigscope.model.filters import Filters
from sigscope.programs import signal as probes
from sigscope.session import ProbeSession

if TYPE_CHECKING:
    from sigscope.fate import Fate, FateTracker
from sigscope.model.signals import parse_signal_list

DEFAULT_BUFFER_SIZE = 16 << 20
DEFAULT_POLL_INTERVAL_MS = 10
# At most this much of the ring buffer is decoded per poll: in a storm the ring is always full,
# and decoding it whole would hold ~100k Events and their JSON in memory at once. Kept below
# glibc's mmap threshold, so the batch's buffer is reused rather than faulted in afresh.
BATCH_BYTES = 96 << 10
BUFFER_KINDS = ("auto", "ringbuf", "perf")
_PAGE_SIZE = 4096
# --fate: a fate record is matched once every signal generated before it has been read. Records
# of the last FATE_SLACK_NS may still be in flight; a call parked longer than FATE_MAX_HOLD_NS
# (stale) no longer holds fates back.
FATE_SLACK_NS = 5_000_000
FATE_MAX_HOLD_NS = 2_000_000_000
# The in-flight scan reads the whole per-thread map: at most this often (an older scan still
# gives a correct, only earlier, horizon).
FATE_SCAN_INTERVAL_NS = 20_000_000


class TraceError(RuntimeError):
    """Tracing could not start or continue; str() is one line for the user."""


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
        claim: str | None = None,
    ) -> None:
        super().__init__(claim)
        if buffer not in BUFFER_KINDS:
            choices = ", ".join(BUFFER_KINDS)
            raise TraceError(f"unknown buffer kind {buffer!r}: choose from {choices}")
        if buffer_size < _PAGE_SIZE:
            raise TraceError(f"buffer size {buffer_size} is smaller than a page")
        self.filters = filters or Filters()
        self.buffer_kind = buffer
        self.buffer_size = buffer_size
        self.duration = duration
        self.poll_interval_ms = poll_interval_ms
        self.decoder = Decoder()
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
            if self.duration is not None:
                self._deadline = time.monotonic() + self.duration
        return self

    def _setup(self) -> None:
        kind = self.buffer_kind
        if kind == "auto":
            kind = "ringbuf" if features.has("ringbuf") else "perf"
        self.buffer_kind = kind
        inflight = self._own(probes.make_inflight_map(self.claim))
        counters = self._own(PerCPUArrayMap(8, probes.NUM_COUNTERS, name="sigscope_count"))
        self._counters = counters
        self._inflight = inflight
        if kind == "ringbuf":
            events: Map = self._own(RingBufMap(_pow2_floor(self.buffer_size // _PAGE_SIZE)
                                               * _PAGE_SIZE, name="sigscope_events"))
            output = probes.OUTPUT_RINGBUF
        else:
            events = self._own(PerfEventArrayMap(name="sigscope_events"))
            output = probes.OUTPUT_PERF
        cfg = probes.ProbeConfig(self.filters, output,
                                 probes.MapFds(inflight.fd, events.fd, counters.fd),
                                 claim=self.claim)
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

    def programs_text(self) -> list[tuple[str, list]]:
        """(name, instructions) of every probe, for `--ebpf` (built with placeholder map fds,
        nothing is loaded)."""
        kind = self.buffer_kind if self.buffer_kind != "auto" else "ringbuf"
        output = probes.OUTPUT_RINGBUF if kind == "ringbuf" else probes.OUTPUT_PERF
        cfg = probes.ProbeConfig(self.filters, output, probes.MapFds(-1, -2, -3))
        plans = itertools.chain(self._fate_plans(cfg) if self.fate else [],
                                probes.signal_probe_plans(cfg))
        return [(", ".join(event for _, event in tracepoints), insns)
                for _, tracepoints, insns in plans]

    def _fate_plans(self, cfg: probes.ProbeConfig) -> list[tuple[str, tuple, list]]:
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
        return [(name, ((system, event),), insns) for name, system, event, insns in
                fate_probes.build_fate_programs(cfg, formats, layout)]

    def stop(self) -> None:
        """Ask the iteration to end (safe from a signal handler); pending events still drain."""
        self._stop = True

    def close(self) -> list[Event | Fate]:
        """Detach, drain what the kernel already wrote, release everything. Returns the
        drained events (iteration yields them itself, batch by batch)."""
        drained: list[Event | Fate] = []
        for batch in self.drain():
            drained += batch
        return drained

    def drain(self) -> Iterator[list[Event | Fate]]:
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
                flushed: list[Event | Fate] = list(self.decoder.flush())
                if self.fate_tracker is not None:
                    self.fate_tracker.add_events(flushed)  # type: ignore[arg-type]
                    flushed += self.fate_tracker.finish(time.monotonic_ns())
                yield flushed
                self._final_lost = self._lost_now()
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

    def _decode(self, batch: bytes, horizon_ns: int | None) -> list:
        """Events of a batch; with --fate, also the fates known up to the horizon."""
        tracker = self.fate_tracker
        if tracker is None:
            return self.decoder.decode(batch)
        if len(batch) % rec.RECORD_SIZE:
            self.decoder.malformed += 1
            batch = batch[: len(batch) - len(batch) % rec.RECORD_SIZE]
        from sigscope.fate import FateRecord

        signal_rows, fate_records = [], []
        kind_index = rec.FIELD_NAMES.index("kind")
        for row in rec.RECORD_STRUCT.iter_unpack(batch):
            if row[kind_index] in rec.FATE_KINDS:
                fate_records.append(FateRecord.from_row(row))
            else:
                signal_rows.append(row)
        out: list = self.decoder.decode_tuples(signal_rows)
        tracker.add_events(out)
        tracker.add_records(fate_records)
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
                kind = int.from_bytes(value[kind_at:kind_at + 4], "little")  # type: ignore
                if kind == rec.KIND_CALL:
                    entered = int.from_bytes(value[call_at:call_at + 8], "little")  # type: ignore
                    if entered > now - FATE_MAX_HOLD_NS:
                        horizon = min(horizon, entered)
        waiting = self._decoder_waiting_ktime()
        if waiting is not None and waiting > now - FATE_MAX_HOLD_NS:
            horizon = min(horizon, waiting)
        self._fate_scan = (now, horizon)
        return horizon

    def _decoder_waiting_ktime(self) -> int | None:
        """Kernel time of the oldest record the decoder holds back (a CALL or FANOUT waiting
        for its partner), whose Events are not out yet."""
        ktime_at = rec.FIELD_NAMES.index("ktime_ns")
        held = [row[ktime_at] for rows in getattr(self.decoder, "_fanouts", {}).values()
                for row in rows]
        held += [row[ktime_at] for row in getattr(self.decoder, "_calls", {}).values()]
        return min(held) if held else None

    def poll(self, timeout_ms: int | None = None) -> list:
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
                return self.fate_tracker.advance(horizon)
            return []
        return self._decode(batch, horizon)

    def poll_lines(self, renderer: LineRenderer, timeout_ms: int | None = None) -> list[str]:
        """poll(), rendered straight to text lines (Decoder.render): the fast path of the
        JSON output. Not with fate (fates need the Events)."""
        if self._reader is None:
            return []
        if self.fate_tracker is not None:
            return [renderer.line(e) for e in self.poll(timeout_ms)]
        self._reader.poll(self.poll_interval_ms if timeout_ms is None else timeout_ms)
        batch = self._reader.read(rec.RECORD_SIZE, BATCH_BYTES)
        return self.decoder.render(batch, renderer) if batch else []

    def expired(self) -> bool:
        return self._stop or (self._deadline is not None and time.monotonic() >= self._deadline)

    def __iter__(self) -> Iterator[Event | Fate]:
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
            for index in (probes.COUNTER_LOST, probes.COUNTER_INFLIGHT_FULL):
                lost += self._counters.sum_u64(struct.pack("<I", index))
        # Not self._reader.lost: a perf buffer's PERF_RECORD_LOST counts the same failed writes
        # the programs count themselves (and arrives late, or never for the last ones).
        lost += max(0, (self._recursion_misses() or 0) - self._recursion_at_start)
        return lost + self._unfinished

    @property
    def lost(self) -> int:
        """Records the kernel could not hand us: buffer full, in-flight map full, and probe
        runs the kernel skipped because another BPF program was running on that CPU
        (bpf_prog_info.recursion_misses; where the kernel cannot count those, before Linux
        5.12, skipped_runs_counted is False and they are not in this number)."""
        if self.finished:
            return getattr(self, "_final_lost", 0)
        return self._lost_now()


def trace(
    signals: Iterable[int] | str | None = None,
    exclude_signals: Iterable[int] | str | None = None,
    pids: Iterable[int] = (),
    target_ids: Iterable[int] = (),
    comm: str | None = None,
    vias: Iterable[str] | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
    buffer: str = "auto",
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    duration: float | None = None,
    fate: bool = False,
) -> Tracer:
    """A Tracer with the same filters as the ``sigscope trace`` command line.

    ``signals``/``exclude_signals`` take numbers or a spec like "USR1,SIGRTMIN+3";
    ``vias`` names send paths (kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo,
    pidfd_send_signal, kernel); ``kill_only`` drops kernel-generated signals.
    With ``fate=True`` (``--fate``) iteration also yields a ``sigscope.fate.Fate`` for each
    queued signal once its end is known (and sets ``event.fate``); see fate.py.
    """
    return Tracer(
        make_filters(signals, exclude_signals, pids, target_ids, comm, vias, failed_only,
                     kill_only),
        buffer=buffer, buffer_size=buffer_size, duration=duration, fate=fate,
    )


def make_filters(
    signals: Iterable[int] | str | None = None,
    exclude_signals: Iterable[int] | str | None = None,
    pids: Iterable[int] = (),
    target_ids: Iterable[int] = (),
    comm: str | None = None,
    vias: Iterable[str] | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
) -> Filters:
    def as_set(value: Iterable[int] | str) -> frozenset[int]:
        return parse_signal_list(value) if isinstance(value, str) else frozenset(value)

    wanted: frozenset[int] | None = None
    if signals is not None:
        wanted = as_set(signals)
    if exclude_signals is not None:
        wanted = (wanted if wanted is not None else frozenset(range(65))) - as_set(exclude_signals)
    via_set = frozenset(vias) if vias is not None else frozenset(rec.VIA_NAMES)
    if kill_only:
        via_set -= {"kernel"}
    return Filters(
        sender_pids=frozenset(pids), target_ids=frozenset(target_ids), signals=wanted,
        comm=comm, vias=via_set, failed_only=failed_only,
    )
