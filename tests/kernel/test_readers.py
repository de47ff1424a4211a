"""The ring buffer and perf buffer readers against real BPF programs.

A tracepoint program on signal:signal_generate emits one fixed 32-byte record per signal sent by
this process (SIGUSR1, ignored: an ignored signal still goes through signal_generate). Each
record carries a sequence number the program takes from an array map, so the tests can prove
that nothing was lost, duplicated or reordered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from sigscope.bpf import asm, uapi
from sigscope.bpf.arch import normalized_machine
from sigscope.bpf.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10
from sigscope.bpf.attach import attach_tracepoint
from sigscope.bpf.maps import ArrayMap, PerfEventArrayMap, RingBufMap
from sigscope.bpf.program import Program
from sigscope.bpf.readers.perfbuf import PerfBufReader, sample_stride
from sigscope.bpf.readers.ringbuf import ReaderError, RingBufReader
from sigscope.bpf.tracefs import event_format

RECORD = struct.Struct("<QIIQQ")  # seq, sig, magic, pid_tgid, seq ^ CHECK
RECORD_SIZE = RECORD.size
MAGIC = 0x5157AB1E
CHECK = 0x5A5A5A5A
RINGBUF_STRIDE = RECORD_SIZE + 8  # header + 32 bytes, already 8-aligned


def emitter_program(state: ArrayMap, output, sig_offset: int, tgid: int) -> list:
    """For our signals: state.seq += 1 and emit the record; count failed outputs in state.failed.

    `output` is a RingBufMap (bpf_ringbuf_output, BPF_RB_NO_WAKEUP) or a PerfEventArrayMap
    (bpf_perf_event_output, BPF_F_CURRENT_CPU). state[0] is { u64 seq; u64 failed; }.
    """
    record = -40  # the 32-byte record lives at r10-40 .. r10-8
    insns = [
        asm.mov64_reg(R6, R1),  # r6 = ctx
        asm.call("get_current_pid_tgid"),
        asm.mov64_reg(R7, R0),  # r7 = pid_tgid
        asm.alu64_imm("RSH", R0, 32),
        asm.jmp_imm("JNE", R0, tgid, "out"),
        asm.st("W", R10, -4, 0),
        asm.ld_map_fd(R1, state.fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, -4),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, "out"),
        asm.mov64_reg(R8, R0),  # r8 = &state[0]
        asm.ldx("DW", R9, R8, 0),  # r9 = seq
        asm.mov64_reg(R1, R9),
        asm.alu64_imm("ADD", R1, 1),
        asm.stx("DW", R8, R1, 0),  # only our (single) sending thread gets here: no race
        asm.stx("DW", R10, R9, record),
        asm.ldx("W", R1, R6, sig_offset),
        asm.stx("W", R10, R1, record + 8),
        asm.st("W", R10, record + 12, MAGIC),
        asm.stx("DW", R10, R7, record + 16),
        asm.mov64_reg(R1, R9),
        asm.alu64_imm("XOR", R1, CHECK),
        asm.stx("DW", R10, R1, record + 24),
    ]
    if isinstance(output, RingBufMap):
        insns += [
            asm.ld_map_fd(R1, output.fd),
            asm.mov64_reg(R2, R10),
            asm.alu64_imm("ADD", R2, record),
            asm.mov64_imm(R3, RECORD_SIZE),
            asm.mov64_imm(R4, uapi.BPF_RB_NO_WAKEUP),
            asm.call("ringbuf_output"),
        ]
    else:
        insns += [
            asm.mov64_reg(R1, R6),
            asm.ld_map_fd(R2, output.fd),
            asm.mov32_imm(R3, -1),  # BPF_F_CURRENT_CPU: 0xffffffff, zero-extended
            asm.mov64_reg(R4, R10),
            asm.alu64_imm("ADD", R4, record),
            asm.mov64_imm(R5, RECORD_SIZE),
            asm.call("perf_event_output"),
        ]
    insns += [
        asm.jmp_imm("JEQ", R0, 0, "out"),
        asm.mov64_imm(R1, 1),
        asm.atomic_add("DW", R8, R1, 8),  # state.failed += 1
        asm.label("out"),
        asm.mov64_imm(R0, 0),
        asm.exit_(),
    ]
    return insns


@contextlib.contextmanager
def emitting_to(output) -> Iterator[ArrayMap]:
    """Load and attach the emitter for `output`; yields the state map."""
    sig_offset = event_format("signal", "signal_generate").fields["sig"].offset
    with ArrayMap(16, 1, name="rdr_state") as state:
        program = Program.load(
            emitter_program(state, output, sig_offset, os.getpid()), name="rdr_emit"
        )
        with program, attach_tracepoint(program, "signal", "signal_generate"):
            yield state


def failures(state: ArrayMap) -> int:
    return struct.unpack("<QQ", state.lookup(struct.pack("<I", 0)))[1]


@pytest.fixture(autouse=True)
def ignore_sigusr1():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def one_cpu():
    """Pin this thread to one CPU so that every perf record lands in the same ring, in order."""
    previous = os.sched_getaffinity(0)
    cpu = min(previous)
    os.sched_setaffinity(0, {cpu})
    yield cpu
    os.sched_setaffinity(0, previous)


def send(count: int) -> None:
    pid = os.getpid()
    for _ in range(count):
        os.kill(pid, signal.SIGUSR1)


def decode(blob: bytes) -> list[int]:
    """Check every record and return the sequence numbers."""
    assert len(blob) % RECORD_SIZE == 0
    seqs = []
    expected = (signal.SIGUSR1, MAGIC, os.getpid())
    for seq, sig, magic, pid_tgid, check in RECORD.iter_unpack(blob):
        assert (sig, magic, pid_tgid >> 32) == expected
        assert check == seq ^ CHECK
        seqs.append(seq)
    return seqs


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- BPF ring buffer ------------------------------------------------------------------------


def test_ringbuf_reads_every_record_exactly_once_in_order():
    with RingBufMap(1 << 20, name="rdr_ring") as ring, emitting_to(ring) as state:
        with RingBufReader(ring) as reader:
            assert not reader.poll(0)  # nothing yet, and poll(0) does not block
            send(5000)
            # Submitted with BPF_RB_NO_WAKEUP: poll must see the data without a wake-up.
            assert reader.poll(0)
            assert reader.available_bytes() == 5000 * RINGBUF_STRIDE
            blob = reader.read(RECORD_SIZE)
            assert decode(blob) == list(range(5000))
            assert reader.available_bytes() == 0
            assert reader.read(RECORD_SIZE) == b""
            assert not reader.poll(10)

            send(7)  # the list form: one bytes per record
            records = reader.read_each()
            assert [len(r) for r in records] == [RECORD_SIZE] * 7
            assert decode(b"".join(records)) == list(range(5000, 5007))
            assert reader.malformed == 0
        assert failures(state) == 0


def test_ringbuf_small_ring_wraps_many_times_across_polls():
    with RingBufMap(4096, name="rdr_small") as ring, emitting_to(ring) as state:
        with RingBufReader(ring) as reader:
            seqs: list[int] = []
            for _batch in range(100):
                send(50)  # 50 * 40 = 2000 bytes: fits in the 4096-byte ring
                assert reader.poll(50)
                seqs += decode(reader.read(RECORD_SIZE))
            assert seqs == list(range(5000))
            # The positions only grow: 200000 bytes went through a 4096-byte ring.
            assert reader.consumer_pos == reader.producer_pos == 5000 * RINGBUF_STRIDE
        assert failures(state) == 0


def test_ringbuf_too_small_counts_the_failed_outputs():
    sent = 1000
    with RingBufMap(4096, name="rdr_full") as ring, emitting_to(ring) as state:
        with RingBufReader(ring) as reader:
            send(sent)  # without reading: the ring fills after ~100 records
            seqs = decode(reader.read(RECORD_SIZE))
        counted_failures = failures(state)
    print(f"ring overflow: captured {len(seqs)}, failed {counted_failures}")
    assert 0 < len(seqs) <= 4096 // RINGBUF_STRIDE
    assert seqs == list(range(len(seqs)))  # the first ones got in, the rest were refused
    assert len(seqs) + counted_failures == sent


def test_ringbuf_reader_close_releases_its_mappings():
    with RingBufMap(1 << 16, name="rdr_close") as ring:
        before = open_fds()
        reader = RingBufReader(ring)
        assert reader.fileno() == ring.fd
        reader.close()
        reader.close()  # idempotent
        assert open_fds() == before
        with pytest.raises(ReaderError, match="closed"):
            reader.read_each()


# --- perf buffer ----------------------------------------------------------------------------


def test_perfbuf_reads_every_record_exactly_once_in_order(one_cpu):
    with PerfEventArrayMap(name="rdr_perf") as perf_map, emitting_to(perf_map) as state:
        with PerfBufReader(perf_map, pages_per_cpu=128) as reader:
            assert one_cpu in reader.cpus
            assert not reader.poll(0)
            send(5000)  # 5000 * 48 bytes on one CPU: fits in 128 pages
            assert reader.poll(0)
            blob = reader.read(RECORD_SIZE)
            assert decode(blob) == list(range(5000))
            assert reader.read(RECORD_SIZE) == b""
            assert not reader.poll(10)

            send(3)  # the list form keeps the kernel's padding of the raw data
            records = reader.read_each()
            assert [len(r) for r in records] == [sample_stride(RECORD_SIZE) - 12] * 3
            assert decode(b"".join(r[:RECORD_SIZE] for r in records)) == [5000, 5001, 5002]
            assert (reader.lost, reader.malformed) == (0, 0)
        assert failures(state) == 0


def test_perfbuf_wraps_across_polls(one_cpu):
    with PerfEventArrayMap(name="rdr_perfw") as perf_map, emitting_to(perf_map) as state:
        with PerfBufReader(perf_map, pages_per_cpu=1) as reader:
            seqs: list[int] = []
            for _batch in range(100):
                send(50)  # 50 * 48 = 2400 bytes: fits in one page
                assert reader.poll(50)
                seqs += decode(reader.read(RECORD_SIZE))
            assert seqs == list(range(5000))
            assert reader.lost == 0
        assert failures(state) == 0


# Syscall numbers of the epoll waits (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64:
# include/uapi/asm-generic/unistd.h, which has only epoll_pwait): glibc's epoll_wait() uses one.
_EPOLL_WAITS = {
    "x86_64": {232, 281, 441},  # __NR_epoll_wait, __NR_epoll_pwait, __NR_epoll_pwait2
    "aarch64": {22, 441},        # __NR_epoll_pwait, __NR_epoll_pwait2
}


def blocked_in_epoll(tid: int) -> bool:
    """The thread sleeps inside an epoll wait: /proc/<tid>/syscall names the call a blocked
    task is in ("running" otherwise). Not wchan: before Linux 5.16 x86 kernels built with the
    ORC unwinder (Debian's 5.10 among them) report 0 there."""
    with open(f"/proc/self/task/{tid}/syscall") as syscall:
        first = syscall.read().split()[0]
    return first.isdigit() and int(first) in _EPOLL_WAITS[normalized_machine()]


def test_perfbuf_watermark_wakes_a_blocked_poll(one_cpu):
    """The kernel wakes a poll() that is already asleep once the watermark is passed."""
    with PerfEventArrayMap(name="rdr_perfk") as perf_map, emitting_to(perf_map) as state:
        with PerfBufReader(perf_map, pages_per_cpu=1, wakeup_bytes=1024) as reader:
            main_tid = threading.get_native_id()
            seen_blocked = []

            def sender() -> None:
                deadline = time.monotonic() + 10
                while not blocked_in_epoll(main_tid) and time.monotonic() < deadline:
                    time.sleep(0.001)  # polling /proc for the ready state, not a fixed delay
                seen_blocked.append(blocked_in_epoll(main_tid))
                send(60)  # 60 * 48 = 2880 bytes: past the 1024-byte watermark

            thread = threading.Thread(target=sender)
            started = time.monotonic()
            thread.start()
            woke = reader.poll(20000)
            elapsed = time.monotonic() - started
            thread.join()
            assert seen_blocked == [True]
            assert woke
            assert elapsed < 15  # woken by the kernel, not by the 20 s timeout
            assert decode(reader.read(RECORD_SIZE)) == list(range(60))
        assert failures(state) == 0


def test_perfbuf_overflow_is_reported_as_lost(one_cpu):
    sent = 1000
    with PerfEventArrayMap(name="rdr_perfl") as perf_map, emitting_to(perf_map) as state:
        with PerfBufReader(perf_map, pages_per_cpu=1) as reader:
            send(sent)  # without reading: one page holds ~85 samples
            seqs = decode(reader.read(RECORD_SIZE))
            # The kernel writes its PERF_RECORD_LOST with the next sample that fits.
            send(1)
            seqs += decode(reader.read(RECORD_SIZE))
            lost = reader.lost
        counted_failures = failures(state)
    captured = len(seqs) - 1
    print(f"perf overflow: captured {captured}, lost {lost}")
    assert 0 < captured < sent
    assert seqs == list(range(captured)) + [sent]
    assert lost > 0
    assert captured + lost == sent
    assert counted_failures == lost  # the program saw the same drops the reader was told of


def test_perfbuf_reader_close_releases_fds_and_mappings():
    with PerfEventArrayMap(name="rdr_perfc") as perf_map:
        before = open_fds()
        reader = PerfBufReader(perf_map, pages_per_cpu=2)
        assert open_fds() > before  # one perf event per CPU, plus the epoll fd
        assert reader.poll(0) is False
        reader.close()
        reader.close()
        assert open_fds() == before
