"""Decoder: records packed exactly as the BPF programs write them -> Events, each signal once."""

from __future__ import annotations

from pathlib import Path

import pytest
from records import (
    IGNORED,
    SENDER_TGID,
    SENDER_TID,
    SIGUSR1,
    call,
    fake_proc,
    fanout,
    pack,
    recipient,
)

from sigscope.decode import FANOUT_WAIT_NS, Decoder, ProcResolver
from sigscope.model import record as rec
from sigscope.model.signals import SI_QUEUE, SI_TKILL, SI_USER


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return fake_proc(tmp_path / "proc", {
        700: (700, "leader"), 701: (700, "worker"), 702: (702, "other"), 703: (703, "third"),
    })


@pytest.fixture
def decoder(proc: Path) -> Decoder:
    return Decoder(resolver=ProcResolver(str(proc)), wall_offset_ns=0, monotonic=lambda: 1.0)


def test_call_alone_is_one_event_with_everything(decoder: Decoder) -> None:
    events = decoder.decode(call(ret=0, arg_pid=700, nemitted=0, **recipient(700)))
    assert len(events) == 1
    e = events[0]
    assert (e.via, e.sig, e.signal, e.result, e.error, e.outcome) == (
        "kill", SIGUSR1, "SIGUSR1", 0, None, "delivered")
    assert (e.sender_pid, e.sender_tid, e.sender_comm, e.sender_uid) == (
        SENDER_TGID, SENDER_TID, "sender", 1000)
    assert (e.target_pid, e.target_tid, e.target_comm) == (700, 700, "target")
    assert (e.arg_pid, e.arg_tid, e.arg_pidfd) == (700, None, None)
    assert (e.code, e.code_name, e.origin) == (SI_USER, "SI_USER", None)
    assert decoder.records == 1


def test_events_are_numbered_in_order(decoder: Decoder) -> None:
    batch = b"".join(call(call_id=1000 + i, **recipient(700)) for i in range(3))
    assert [e.id for e in decoder.decode(batch)] == [1, 2, 3]


def _fanout_batch_order(order: str) -> bytes:
    head = call(call_id=1000, ret=0, arg_pid=-700, nemitted=2, **recipient(700, ngen=3))
    # A FANOUT is a copy of the parked call (arguments included) with its own recipient.
    tail = [fanout(1000, 2, 702, arg_pid=-700), fanout(1000, 1, 701, arg_pid=-700)]
    return b"".join([head, *tail] if order == "call_first" else [*tail, head])


@pytest.mark.parametrize("order", ["call_first", "fanouts_first"])
def test_call_joins_its_fanouts_in_either_arrival_order(decoder: Decoder, order: str) -> None:
    events = decoder.decode(_fanout_batch_order(order))
    assert [e.target_tid for e in events] == [700, 701, 702]
    assert all(e.result == 0 and e.via == "kill" and e.arg_pid == -700 for e in events)
    assert decoder.flush() == []
    assert decoder.records == 3


@pytest.mark.parametrize("order", ["call_first", "fanouts_first"])
def test_join_across_batches(decoder: Decoder, order: str) -> None:
    records = _fanout_batch_order(order)
    size = rec.RECORD_SIZE
    first = decoder.decode(records[:size])
    assert first == []  # waits for its partners
    rest = decoder.decode(records[size:2 * size]) + decoder.decode(records[2 * size:])
    assert sorted(e.target_tid for e in rest) == [700, 701, 702]
    assert {e.result for e in rest} == {0}


def test_fanout_result_is_the_calls_return_value(decoder: Decoder) -> None:
    batch = fanout(1000, 1, 701) + call(call_id=1000, ret=0, nemitted=1, arg_pid=-700,
                                        **recipient(700, ngen=2))
    assert [e.result for e in decoder.decode(batch)] == [0, 0]


def test_fanout_whose_call_never_comes_is_flushed(decoder: Decoder) -> None:
    assert decoder.decode(fanout(1000, 1, 701)) == []
    flushed = decoder.flush()
    assert len(flushed) == 1
    assert flushed[0].target_tid == 701 and flushed[0].result is None
    assert decoder.flush() == []


def test_fanout_whose_call_never_comes_expires_with_later_traffic(decoder: Decoder) -> None:
    assert decoder.decode(fanout(1000, 1, 701, ktime_ns=1000)) == []
    later = call(call_id=5000, ktime_ns=1000 + FANOUT_WAIT_NS + 1, **recipient(702))
    events = decoder.decode(later)
    assert sorted(e.target_tid for e in events) == [701, 702]


def test_call_missing_a_fanout_is_flushed_once(decoder: Decoder) -> None:
    assert decoder.decode(call(nemitted=1, **recipient(700, ngen=2))) == []
    assert [e.target_tid for e in decoder.flush()] == [700]
    assert decoder.records == 1


def test_kernel_record(decoder: Decoder) -> None:
    row = pack(kind=rec.KIND_KERNEL, via=rec.VIA_KERNEL, sig=11, sender_tgid=702,
               sender_tid=702, sender_comm=b"crasher", ktime_ns=99,
               **{**recipient(702, group=0, comm=b"crasher"), "gen_code": 1})
    (e,) = decoder.decode(row)
    assert (e.via, e.signal, e.origin, e.code_name) == ("kernel", "SIGSEGV", "fault",
                                                        "SEGV_MAPERR")
    assert (e.result, e.error, e.arg_pid, e.arg_tid, e.arg_pidfd) == (None, None, None, None,
                                                                      None)
    assert (e.target_pid, e.target_tid, e.target_comm) == (702, 702, "crasher")
    assert e.target_source == "kernel"  # the current thread: its process is the kernel's


def test_kernel_record_to_a_thread_resolves_its_process(decoder: Decoder) -> None:
    row = pack(kind=rec.KIND_KERNEL, via=rec.VIA_KERNEL, sig=14,
               **{**recipient(701, group=0), "gen_code": 0x80})
    (e,) = decoder.decode(row)
    assert (e.target_pid, e.target_tid) == (700, 701)
    assert e.origin == "timer"
    assert (e.target_source, e.to_dict()["target"]["source"]) == ("proc", "proc")


def test_tgkill_target_process_comes_from_the_arguments(decoder: Decoder) -> None:
    row = call(via="tgkill", arg_pid=700, arg_tid=701,
               **{**recipient(701, group=0), "gen_code": SI_TKILL})
    (e,) = decoder.decode(row)
    assert (e.target_pid, e.target_tid, e.arg_pid, e.arg_tid) == (700, 701, 700, 701)
    assert e.code_name == "SI_TKILL"
    assert e.target_source == "args"


def test_a_recipient_read_from_its_task_is_the_kernels(decoder: Decoder) -> None:
    (e,) = decoder.decode(call(via="tkill", arg_pid=701,
                               **{**recipient(701, group=0), "target_tgid": 12345,
                                  "target_src": rec.TARGET_SRC_TASK}))
    assert (e.target_pid, e.target_tid, e.target_source) == (12345, 701, "kernel")


@pytest.mark.parametrize(
    ("via", "arg_pid", "arg_tid", "expected"),
    [
        ("kill", 702, 0, (702, None, "other")),
        ("kill", -702, 0, (None, None, None)),     # a process group: no single target
        ("kill", -1, 0, (None, None, None)),
        ("rt_sigqueueinfo", 703, 0, (703, None, "third")),
        ("tkill", 701, 0, (700, 701, "leader")),   # the thread's process, from /proc
        ("tgkill", 700, 701, (700, 701, "leader")),
        ("rt_tgsigqueueinfo", 702, 702, (702, 702, "other")),
        ("kill", 99999, 0, (99999, None, None)),   # no such process: comm unknown
    ],
)
def test_failed_send_target_from_arguments(
    decoder: Decoder, via: str, arg_pid: int, arg_tid: int, expected: tuple
) -> None:
    (e,) = decoder.decode(call(via=via, ret=-3, arg_pid=arg_pid, arg_tid=arg_tid))
    assert (e.target_pid, e.target_tid, e.target_comm) == expected
    assert e.target_source == (None if e.target_pid is None else
                               "proc" if via == "tkill" else "args")
    assert (e.result, e.error, e.outcome, e.code, e.code_name) == (-3, "ESRCH", None, None, None)


def test_pidfd_target_resolved_from_fdinfo(proc: Path, decoder: Decoder) -> None:
    fdinfo = proc / str(SENDER_TGID) / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "7").write_text("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nPid:\t702\n"
                              "NSpid:\t702\n")
    (e,) = decoder.decode(call(via="pidfd_send_signal", ret=-1, arg_pidfd=7))
    assert (e.target_pid, e.target_comm, e.arg_pidfd, e.arg_pid) == (702, "other", 7, None)
    assert e.target_source == "proc"
    assert e.error == "EPERM"


def test_pidfd_of_a_dead_process_has_no_target(proc: Path, decoder: Decoder) -> None:
    fdinfo = proc / str(SENDER_TGID) / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "7").write_text("pos:\t0\nPid:\t-1\n")
    (e,) = decoder.decode(call(via="pidfd_send_signal", ret=-3, arg_pidfd=7))
    assert (e.target_pid, e.arg_pidfd, e.target_source) == (None, 7, None)


def test_successful_pidfd_send_uses_the_kernels_recipient(decoder: Decoder) -> None:
    (e,) = decoder.decode(call(via="pidfd_send_signal", ret=0, arg_pidfd=7,
                               **{**recipient(702), "gen_code": SI_QUEUE}))
    assert (e.target_pid, e.target_tid, e.target_comm) == (702, 702, "target")
    assert e.code_name == "SI_QUEUE"


def test_group_signal_to_a_vanished_task_keeps_the_kernels_id(decoder: Decoder) -> None:
    (e,) = decoder.decode(call(arg_pid=88888, **recipient(88888, comm=b"gone")))
    assert (e.target_pid, e.target_tid, e.target_comm) == (88888, 88888, "gone")
    assert e.target_source == "tid"


def test_signal_to_self_needs_no_proc_lookup(tmp_path: Path) -> None:
    decoder = Decoder(resolver=ProcResolver(str(tmp_path / "empty")), wall_offset_ns=0)
    (e,) = decoder.decode(call(via="tkill", arg_pid=SENDER_TID, **recipient(SENDER_TID, group=0)))
    assert (e.target_pid, e.target_tid) == (SENDER_TGID, SENDER_TID)
    assert (e.arg_pid, e.arg_tid) == (None, SENDER_TID)  # tkill's argument is a thread id


def test_outcomes_and_sig_zero(decoder: Decoder) -> None:
    rows = call(call_id=1, **{**recipient(700), "gen_result": IGNORED})
    rows += call(call_id=2, **{**recipient(700), "gen_result": 2})
    rows += call(call_id=3, sig=0, arg_pid=700)  # a probe: nothing generated
    events = decoder.decode(rows)
    assert [e.outcome for e in events] == ["ignored", "already_pending", None]
    assert events[2].signal == "0" and events[2].result == 0 and events[2].target_pid == 700


def test_time_is_ktime_plus_the_wall_offset(proc: Path) -> None:
    decoder = Decoder(resolver=ProcResolver(str(proc)), wall_offset_ns=1_000_000_000)
    (e,) = decoder.decode(call(ktime_ns=5, **recipient(700)))
    assert (e.ktime_ns, e.time_ns) == (5, 1_000_000_005)


def test_partial_and_unknown_records_are_counted_as_malformed(decoder: Decoder) -> None:
    events = decoder.decode(call(**recipient(700)) + pack(kind=9) + b"\0" * 5)
    assert len(events) == 1
    assert decoder.malformed == 2


def test_proc_resolver_caches(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {42: (40, "cached")})
    resolver = ProcResolver(str(proc))
    assert resolver.tgid(42, now=0.0) == 40 and resolver.comm(42, now=0.0) == "cached"
    (proc / "42" / "comm").write_text("renamed\n")
    assert resolver.comm(42, now=0.5) == "cached"
    assert resolver.comm(42, now=5.0) == "renamed"
    assert resolver.tgid(41, now=0.0) is None
