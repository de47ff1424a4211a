"""The signal programs' fast paths on the real kernel: the sender read from task_struct gives
exactly the records the helper calls give, and the in-flight slots must be claimed, found and
released as documented (collisions, a stale slot of the same thread, every probed slot busy),
on both in-flight claims (cmpxchg slots where the kernel has BPF atomics, the tid-keyed hash
everywhere).

The programs are loaded directly (tgkill only) and see every tgkill on the machine: only records
sent by this thread are looked at.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager

import pytest

from sigscope.bpf.attach import attach_tracepoint
from sigscope.bpf.btf import Btf
from sigscope.bpf.btf_scan import VMLINUX_BTF_PATH, struct_members, vmlinux_struct_members
from sigscope.bpf.maps import PerCPUArrayMap, RingBufMap
from sigscope.bpf.program import Program
from sigscope.bpf.readers.ringbuf import RingBufReader
from sigscope.bpf.tracefs import event_format
from sigscope.model import record as rec
from sigscope.model.filters import Filters
from sigscope.programs import common
from sigscope.programs import signal as probes
from sigscope.programs.common import Role
from sigscope.programs.task import task_layout
from sigscope.send import send_signal
from sigscope.session import count_unfinished_calls, detach_in_order, make_inflight_map

SIGURG = 23  # default action: ignore. Sending it to ourselves generates it, and nothing happens.
PR_SET_NAME, PR_GET_NAME = 15, 16
TIMES = ("ktime_ns", "call_id")


class Probes:
    """The tgkill programs of one ProbeConfig with maps of their own, attached."""

    def __init__(self, task_fields: bool, filters: Filters | None = None,
                 claim: str | None = None) -> None:
        self.inflight = make_inflight_map(claim)
        self.counters = PerCPUArrayMap(8, common.NUM_COUNTERS, name="test_counters")
        self.events = RingBufMap(1 << 20, name="test_events")
        self.cfg = probes.ProbeConfig(
            filters or Filters(), common.RingbufOutput(self.events.fd, self.counters.fd),
            probes.MapFds(self.inflight.fd, self.counters.fd),
            claim=claim or probes.inflight_claim(), task=task_layout() if task_fields else None,
            entry_probes=True)  # the three programs below (sys_enter parks each call)
        self.reader = RingBufReader(self.events)
        built = [
            (Role.EXIT, "sys_exit_tgkill", probes.build_sys_exit(
                self.cfg, "tgkill", event_format("syscalls", "sys_exit_tgkill"))),
            (Role.GENERATE, "signal_generate", probes.build_signal_generate(
                self.cfg, event_format("signal", "signal_generate"))),
            (Role.ENTRY, "sys_enter_tgkill", probes.build_sys_enter(
                self.cfg, "tgkill", event_format("syscalls", "sys_enter_tgkill"))),
        ]
        self.programs = [Program.load(insns, name="test_probe") for _, _, insns in built]
        self.attachments = [
            (role, attach_tracepoint(prog, "signal" if event == "signal_generate" else "syscalls",
                                     event))
            for prog, (role, event, _) in zip(self.programs, built, strict=True)
        ]

    def mine(self) -> list[dict]:
        """Every record written so far by this thread, as dicts."""
        data = self.reader.read(rec.RECORD_SIZE)
        rows = [dict(zip(rec.FIELD_NAMES, row, strict=True))
                for row in rec.RECORD_STRUCT.iter_unpack(data)]
        return [r for r in rows if r["sender_tid"] == threading.get_native_id()]

    def counter(self, index: int) -> int:
        return self.counters.sum_u64(index.to_bytes(4, "little"))

    def close(self) -> None:
        detach_in_order(self.attachments)
        for prog in self.programs:
            prog.close()
        self.reader.close()
        for m in (self.inflight, self.counters, self.events):
            m.close()


@contextmanager
def attached(task_fields: bool = True, filters: Filters | None = None,
             claim: str | None = None):
    p = Probes(task_fields, filters, claim)
    try:
        yield p
    finally:
        p.close()


@contextmanager
def thread_comm(name: bytes):
    libc = ctypes.CDLL(None, use_errno=True)
    old = ctypes.create_string_buffer(16)
    libc.prctl(PR_GET_NAME, old, 0, 0, 0)
    libc.prctl(PR_SET_NAME, name, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_NAME, old.value, 0, 0, 0)


def tgkill_self(sig: int) -> None:
    send_signal("tgkill", sig, pid=os.getpid(), tid=threading.get_native_id())


def without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMES}


# The task_struct path needs bpf_get_current_task_btf (without it the programs quietly use the
# helpers, and a comparison of the two paths would compare the helpers with themselves).
TASK_FIELDS = [pytest.param(True, marks=pytest.mark.needs("get_current_task_btf"), id="task"),
               pytest.param(False, id="helpers")]
CLAIMS = [pytest.param(probes.CLAIM_CMPXCHG, marks=pytest.mark.needs("bpf_atomics"),
                       id="cmpxchg"),
          pytest.param(probes.CLAIM_TID_HASH, id="tid_hash")]


@pytest.mark.needs("btf_vmlinux")
def test_btf_scan_agrees_with_the_full_parser() -> None:
    with open(VMLINUX_BTF_PATH, "rb") as f:
        data = f.read()
    btf = Btf.load()
    wanted = {"task_struct": ("pid", "tgid", "comm", "cred", "exit_code"), "cred": ("uid",)}
    early = vmlinux_struct_members(*wanted)
    for struct_name, members in wanted.items():
        whole = struct_members(data, struct_name)  # and the only one of its name
        assert early[struct_name] == whole
        for member in members:
            assert whole[member].offset == btf.member_offset(struct_name, member)
    assert early["task_struct"]["comm"].span >= 16


@pytest.mark.needs("btf_vmlinux", "get_current_task_btf")
def test_this_kernel_reads_the_sender_from_task_struct() -> None:
    layout = task_layout()
    assert layout is not None  # BTF and the helper: the fast path must be the one in use
    assert layout.comm == Btf.load().member_offset("task_struct", "comm")


@pytest.mark.needs("get_current_task_btf")
@pytest.mark.parametrize("claim", CLAIMS)
@pytest.mark.parametrize("comm", [b"sigscope-cmp-15", b"ab", b"x"])
def test_task_fields_give_the_records_the_helpers_give(comm: bytes, claim: str) -> None:
    with attached(task_fields=True, claim=claim) as fast, \
            attached(task_fields=False, claim=claim) as slow, thread_comm(comm):
        tgkill_self(SIGURG)
        tgkill_self(0)  # generates nothing: the CALL carries no recipient
        fast_records, slow_records = fast.mine(), slow.mine()
    assert len(fast_records) == 2
    assert [without_times(r) for r in fast_records] == [without_times(r) for r in slow_records]
    first = fast_records[0]
    assert first["sender_comm"] == comm.ljust(16, b"\0")
    assert (first["sender_uid"], first["sender_tgid"]) == (os.getuid(), os.getpid())
    assert (first["kind"], first["sig"], first["ngen"]) == (rec.KIND_CALL, SIGURG, 1)
    assert fast_records[1]["gen_result"] == rec.GEN_NONE


@pytest.mark.parametrize("claim", CLAIMS)
@pytest.mark.parametrize("task_fields", TASK_FIELDS)
def test_comm_filter_on_both_paths(task_fields: bool, claim: str) -> None:
    # A longer name first: the stack the comm is read into (and the task's comm itself, on
    # kernels that rename without padding) then holds bytes after the shorter name's NUL.
    with attached(task_fields, Filters(comm="sigscope-cf"), claim) as p:
        for _ in range(20):
            with thread_comm(b"sigscope-cf2xyz"):
                tgkill_self(0)
            with thread_comm(b"sigscope-cf"):
                tgkill_self(0)
        records = p.mine()
    assert [r["sender_comm"] for r in records] == [b"sigscope-cf".ljust(16, b"\0")] * 20


def _slot_key(index: int) -> bytes:
    return (index % probes.INFLIGHT_SLOTS).to_bytes(4, "little")


def _slot(owner: int, kind: int, call_id: int = 0) -> bytes:
    record = bytearray(rec.RECORD_SIZE)
    record[rec.offset("kind"):rec.offset("kind") + 4] = kind.to_bytes(4, "little")
    record[rec.offset("call_id"):rec.offset("call_id") + 8] = call_id.to_bytes(8, "little")
    return bytes(record) + owner.to_bytes(4, "little") + bytes(4)


def _owner(inflight, index: int) -> int:
    value = inflight.lookup(_slot_key(index))
    return int.from_bytes(value[probes.INFLIGHT_VALUE_SIZE - 8:][:4], "little")


@pytest.mark.needs("bpf_atomics")
@pytest.mark.parametrize("task_fields", TASK_FIELDS)
def test_inflight_slots_collisions_reuse_and_full(task_fields: bool) -> None:
    tid = threading.get_native_id()
    busy = probes.INFLIGHT_BUSY
    other = tid + 1 if tid + 1 < (1 << 22) else tid - 1
    with attached(task_fields, claim=probes.CLAIM_CMPXCHG) as p:
        # The thread's first slot is in use by another thread's call: the next one is taken,
        # and released (owned by us, idle) at exit.
        p.inflight.update(_slot_key(tid), _slot(other | busy, rec.KIND_CALL, call_id=7))
        tgkill_self(SIGURG)
        assert [r["ngen"] for r in p.mine()] == [1]
        assert _owner(p.inflight, tid) == other | busy
        assert _owner(p.inflight, tid + 1) == tid
        assert count_unfinished_calls(p.inflight) == 1  # the other thread's

        # A slot this thread left busy (its exit never ran) is reused, not duplicated.
        p.inflight.update(_slot_key(tid + 1), _slot(other | busy, rec.KIND_CALL))
        p.inflight.update(_slot_key(tid + 2), _slot(tid | busy, rec.KIND_CALL))
        tgkill_self(0)
        assert len(p.mine()) == 1
        assert _owner(p.inflight, tid + 2) == tid
        assert _owner(p.inflight, tid + 3) in (0, tid)  # never claimed by us

        # Every probed slot busy: the call is counted as lost, never attributed elsewhere.
        for i in range(probes.INFLIGHT_PROBES):
            p.inflight.update(_slot_key(tid + i), _slot(other | busy, rec.KIND_CALL))
        tgkill_self(SIGURG)
        assert p.counter(common.COUNTER_INFLIGHT_FULL) == 1
        mine = p.mine()
        # The generated signal is then seen as the kernel's own (as with a full map before).
        assert [r["kind"] for r in mine] == [rec.KIND_KERNEL]


def _tid_key(tid: int) -> bytes:
    return tid.to_bytes(4, "little")


@pytest.mark.parametrize("task_fields", TASK_FIELDS)
def test_inflight_by_tid_stale_entry_reuse_and_full(task_fields: bool) -> None:
    """CLAIM_TID_HASH: the call lives under its thread id from entry to exit and is then
    deleted; an entry the thread's last call left (its exit never ran) is replaced; a full
    map counts the call as lost."""
    tid = threading.get_native_id()
    with attached(task_fields, claim=probes.CLAIM_TID_HASH) as p:
        other = [t for t in (tid + 1, tid + 2) if t < (1 << 22)][0]
        p.inflight.update(_tid_key(other), _slot(0, rec.KIND_CALL, call_id=7)[:rec.RECORD_SIZE])
        tgkill_self(SIGURG)
        assert [r["ngen"] for r in p.mine()] == [1]
        assert p.inflight.lookup(_tid_key(tid)) is None  # deleted at exit
        assert count_unfinished_calls(p.inflight) == 1  # the other thread's

        # A stale entry of this thread (its exit never ran): replaced, one record.
        p.inflight.update(_tid_key(tid), _slot(0, rec.KIND_CALL, call_id=9)[:rec.RECORD_SIZE])
        tgkill_self(0)
        mine = p.mine()
        assert len(mine) == 1 and mine[0]["call_id"] != 9
        assert p.inflight.lookup(_tid_key(tid)) is None

        # The map full of other threads' calls: counted as lost, never attributed elsewhere.
        held, key = 1, 1
        while held < probes.INFLIGHT_SLOTS:
            if key not in (tid, other):
                p.inflight.update(_tid_key(key), _slot(0, rec.KIND_CALL)[:rec.RECORD_SIZE])
                held += 1
            key += 1
        tgkill_self(SIGURG)
        # >= 1: the programs see every tgkill on the machine, and any is lost while full.
        assert p.counter(common.COUNTER_INFLIGHT_FULL) >= 1
        assert [r["kind"] for r in p.mine()] == [rec.KIND_KERNEL]
