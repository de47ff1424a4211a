"""--fate on a kernel with neither BTF nor sched_process_exit's group_dead (before 6.16): every
thread exit is written with FLAG_GROUP_UNKNOWN, and what it cannot tell is unknown."""

from __future__ import annotations

from test_fate import PID, SIGKILL, SIGTERM, WORKER, deliver, run, sent

from sigscope.fate import FateRecord
from sigscope.model import record as rec


def exited_unknown(ktime: int, tid: int = PID) -> FateRecord:
    return FateRecord(kind=rec.KIND_EXIT, ktime_ns=ktime, pid=PID, tid=tid, comm="target", sig=0,
                      exit_code=None, group_dead=False, group_unknown=True)


def test_record_flag_is_read() -> None:
    row = [0] * len(rec.FIELD_NAMES)
    names = list(rec.FIELD_NAMES)
    row[names.index("kind")] = rec.KIND_EXIT
    row[names.index("sender_comm")] = b"x"
    row[names.index("flags")] = rec.FLAG_EXIT_CODE_UNKNOWN | rec.FLAG_GROUP_UNKNOWN
    record = FateRecord.from_row(tuple(row))
    assert record.group_unknown and record.exit_code is None and not record.group_dead


def test_converted_fatal_signal_ends_unknown_not_pending() -> None:
    # SIGTERM with the default action becomes a group exit: every thread takes SIGKILL, and
    # without the exit code nothing ties the death to the SIGTERM still queued.
    term = sent(SIGTERM, 1000)
    fates = run(term, deliver(SIGKILL, 2000), exited_unknown(3000))
    assert [(f.id, f.effect) for f in fates] == [(term.id, "unknown")]


def test_signal_queued_to_a_live_process_stays_pending() -> None:
    term = sent(SIGTERM, 1000)
    fates = run(term)
    assert [f.effect for f in fates] == ["pending"]


def test_fatal_delivery_to_a_thread_that_exits_is_unknown() -> None:
    term = sent(SIGTERM, 1000, tid=WORKER, group=False, via="tgkill")
    fates = run(term, deliver(SIGTERM, 2000, tid=WORKER), exited_unknown(3000, tid=WORKER))
    assert [f.effect for f in fates] == ["unknown"]
