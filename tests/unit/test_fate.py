"""FateTracker with synthetic signals and fate records: matching, effects, order, bounds."""

from __future__ import annotations

import io
import json

from sigscope.fate import (
    Fate,
    FateRecord,
    FateTracker,
    flag_names,
    format_latency,
)
from sigscope.model import record as rec
from sigscope.model.event import Event
from sigscope.outputs.trace import JsonWriter, TextWriter

PID, WORKER = 100, 101
SIGUSR1, SIGSEGV, SIGTERM, SIGKILL, SIGCONT, SIGSTOP, SIGTSTP, SIGRTMIN = (
    10, 11, 15, 9, 18, 19, 20, 34)
SA_SIGINFO, SA_RESTART = 0x4, 0x10000000
END = 1 << 62

_ids = iter(range(1, 1_000_000))


def sent(sig: int, ktime: int, tid: int = PID, pid: int = PID, group: bool = True,
         outcome: str = "delivered", via: str = "kill") -> Event:
    return Event.of(next(_ids), ktime, ktime, sig=sig, via=via, sender_pid=1, sender_tid=1,
                    sender_comm="sender", sender_uid=0, target_pid=pid, target_tid=tid,
                    target_comm="target", arg_pid=pid, arg_tid=None, arg_pidfd=None, code=0,
                    result=0, outcome=outcome, group=group)


def deliver(sig: int, ktime: int, tid: int = PID, pid: int = PID, handler: int = 0,
            flags: int = 0) -> FateRecord:
    return FateRecord(kind=rec.KIND_DELIVER, ktime_ns=ktime, pid=pid, tid=tid, comm="target",
                      sig=sig, handler=handler, flags=flags)


def exited(ktime: int, exit_code: int | None, tid: int = PID, pid: int = PID,
           group_dead: bool = True) -> FateRecord:
    return FateRecord(kind=rec.KIND_EXIT, ktime_ns=ktime, pid=pid, tid=tid, comm="target", sig=0,
                      exit_code=exit_code, group_dead=group_dead)


def run(*items: Event | FateRecord, end: bool = True) -> list[Fate]:
    tracker = FateTracker()
    tracker.add_events(i for i in items if isinstance(i, Event))
    tracker.add_records(i for i in items if isinstance(i, FateRecord))
    return tracker.finish(END) if end else tracker.advance(END)


def test_handled_signal_has_thread_latency_handler_and_flags() -> None:
    event = sent(SIGUSR1, 1000)
    [fate] = run(event, deliver(SIGUSR1, 4000, tid=WORKER, handler=0x401000,
                                flags=SA_SIGINFO | SA_RESTART))
    assert (fate.id, fate.effect, fate.tid, fate.pid) == (event.id, "handled", WORKER, PID)
    assert fate.latency_ns == 3000
    assert fate.disposition == "handler" and fate.handler_text == "0x401000"
    assert fate.flag_names == ["SA_SIGINFO", "SA_RESTART"]
    assert event.fate is fate


def test_coalesced_signal_gets_no_fate() -> None:
    first = sent(SIGUSR1, 1000)
    second = sent(SIGUSR1, 2000, outcome="already_pending")
    fates = run(first, second, deliver(SIGUSR1, 3000, handler=0x5000))
    assert [f.id for f in fates] == [first.id]
    assert second.fate is None


def test_private_queue_is_taken_before_shared_queue() -> None:
    shared = sent(SIGUSR1, 1000, tid=PID, group=True)
    private = sent(SIGUSR1, 2000, tid=WORKER, group=False, via="tgkill")
    fates = run(shared, private, deliver(SIGUSR1, 3000, tid=WORKER, handler=0x5000),
                deliver(SIGUSR1, 4000, tid=WORKER, handler=0x5000))
    assert [f.id for f in fates] == [private.id, shared.id]


def test_realtime_signals_match_first_in_first_out() -> None:
    events = [sent(SIGRTMIN, 1000 + i) for i in range(3)]
    fates = run(*events, *[deliver(SIGRTMIN, 5000 + i, handler=0x5000) for i in range(3)])
    assert [f.id for f in fates] == [e.id for e in events]
    assert [f.latency_ns for f in fates] == [4000, 4000, 4000]


def test_converted_fatal_signal_reports_the_signal_sent_not_sigkill() -> None:
    term = sent(SIGTERM, 1000)
    fates = run(term, deliver(SIGKILL, 1500, tid=WORKER), deliver(SIGKILL, 1600, tid=PID),
                exited(2000, SIGTERM, tid=WORKER, group_dead=False), exited(2100, SIGTERM))
    [fate] = fates
    assert (fate.id, fate.effect, fate.cause) == (term.id, "terminated", SIGTERM)
    assert (fate.tid, fate.latency_ns, fate.disposition) == (WORKER, 500, "default")
    assert fate.to_dict()["cause"] == {"sig": SIGTERM, "signal": "SIGTERM"}


def test_sigkill_sent_is_terminated_by_sigkill() -> None:
    kill = sent(SIGKILL, 1000)
    [fate] = run(kill, deliver(SIGKILL, 1200), exited(1300, SIGKILL))
    assert (fate.id, fate.effect, fate.cause, fate.latency_ns) == (
        kill.id, "terminated", SIGKILL, 200)


def test_core_dump_decided_at_exit() -> None:
    segv = sent(SIGSEGV, 1000, group=False, via="kernel")
    [fate] = run(segv, deliver(SIGSEGV, 1100), exited(9000, SIGSEGV | 0x80))
    assert (fate.effect, fate.cause, fate.exit_code) == ("core_dumped", SIGSEGV, SIGSEGV | 0x80)
    assert fate.ktime_ns == 1100 and fate.latency_ns == 100


def test_fatal_without_core_and_without_btf() -> None:
    segv = sent(SIGSEGV, 1000, group=False)
    assert run(segv, deliver(SIGSEGV, 1100), exited(2000, SIGSEGV))[0].effect == "terminated"
    segv = sent(SIGSEGV, 1000, group=False)
    [fate] = run(segv, deliver(SIGSEGV, 1100), exited(2000, None))
    assert (fate.effect, fate.cause) == ("unknown", None)


def test_fatal_delivery_without_exit_is_unknown_at_the_end() -> None:
    [fate] = run(sent(SIGTERM, 1000), deliver(SIGTERM, 1100))
    assert fate.effect == "unknown"
    assert run(sent(SIGTERM, 1000), deliver(SIGTERM, 1100), end=False) == []


def cont_state(ktime: int, flags: int, tid: int = PID, pid: int = PID) -> FateRecord:
    """The KIND_SIGCONT record of a SIGCONT generation: the target's signal_struct flags."""
    return FateRecord(kind=rec.KIND_SIGCONT, ktime_ns=ktime, pid=1, tid=1, comm="sender",
                      sig=SIGCONT, flags=flags, target_pid=pid, target_tid=tid)


CLD_CONTINUED_NOTE, STOP_CONTINUED = 0x20 | 0x2, 0x2


def run_with_states(*items: Event | FateRecord) -> list[Fate]:
    tracker = FateTracker()
    tracker.sigcont_states = True
    tracker.add_events(i for i in items if isinstance(i, Event))
    tracker.add_records(i for i in items if isinstance(i, FateRecord))
    return tracker.finish(END)


def test_stop_and_continue() -> None:
    stop = sent(SIGSTOP, 1000)
    cont = sent(SIGCONT, 3000, outcome="ignored")  # default action: ignored at generation
    fates = run_with_states(stop, deliver(SIGSTOP, 1100), cont,
                            cont_state(3001, CLD_CONTINUED_NOTE))
    assert [(f.id, f.effect) for f in fates] == [(stop.id, "stopped"), (cont.id, "continued")]
    assert (fates[1].pid, fates[1].tid, fates[1].latency_ns) == (PID, PID, 0)
    cont = sent(SIGCONT, 1000)
    assert run(cont, deliver(SIGCONT, 1200))[0].effect == "continued"


def test_sigcont_that_resumed_nothing_has_no_fate() -> None:
    cont = sent(SIGCONT, 3000, outcome="ignored")
    assert run_with_states(cont, cont_state(3001, 0)) == []
    assert run_with_states(cont, cont_state(3001, STOP_CONTINUED)) == []  # an old resume


def test_second_sigcont_before_the_note_is_taken_is_unknown() -> None:
    first = sent(SIGCONT, 3000, outcome="ignored")
    second = sent(SIGCONT, 4000, outcome="ignored")
    fates = run_with_states(first, cont_state(3001, CLD_CONTINUED_NOTE),
                            second, cont_state(4001, CLD_CONTINUED_NOTE))
    assert [(f.id, f.effect) for f in fates] == [(first.id, "continued"), (second.id, "unknown")]
    # A delivery in the process in between: get_signal() took the note, so a note seen
    # again is the second SIGCONT's own.
    first = sent(SIGCONT, 3000, outcome="ignored")
    second = sent(SIGCONT, 5000, outcome="ignored")
    fates = run_with_states(first, cont_state(3001, CLD_CONTINUED_NOTE),
                            sent(SIGSTOP, 3500), deliver(SIGSTOP, 3600),
                            second, cont_state(5001, CLD_CONTINUED_NOTE))
    assert [f.effect for f in fates if f.sig == SIGCONT] == ["continued", "continued"]


def test_ignored_sigcont_without_state_evidence_is_unknown() -> None:
    [fate] = run(sent(SIGCONT, 3000, outcome="ignored"))
    assert fate.effect == "unknown"
    # Evidence expected but its record lost: unknown at the end.
    [fate] = run_with_states(sent(SIGCONT, 3000, outcome="ignored"))
    assert fate.effect == "unknown"


def test_sigcont_flushes_a_queued_stop_signal() -> None:
    tstp = sent(SIGTSTP, 1000)
    cont = sent(SIGCONT, 2000, outcome="ignored")
    fates = run_with_states(tstp, cont, cont_state(2001, 0x10))  # SIGNAL_CLD_STOPPED
    assert [(f.id, f.effect) for f in fates] == [(tstp.id, "flushed"), (cont.id, "continued")]


def test_ignored_at_delivery() -> None:
    assert run(sent(SIGUSR1, 1), deliver(SIGUSR1, 2, handler=1))[0].effect == "ignored"
    assert run(sent(28, 1), deliver(28, 2))[0].effect == "ignored"  # SIGWINCH default


def test_consumed_by_sigwaitinfo() -> None:
    event = sent(SIGUSR1, 1000)
    consumed = FateRecord(kind=rec.KIND_CONSUMED, ktime_ns=1700, pid=PID, tid=WORKER,
                          comm="target", sig=SIGUSR1)
    [fate] = run(event, consumed)
    assert (fate.effect, fate.tid, fate.latency_ns, fate.disposition) == (
        "consumed", WORKER, 700, None)


def test_sigaction_to_ignore_flushes() -> None:
    event = sent(SIGUSR1, 1000, tid=WORKER, group=False)
    ignore = FateRecord(kind=rec.KIND_SIGACTION, ktime_ns=2000, pid=PID, tid=PID, comm="target",
                        sig=SIGUSR1, handler=1)
    [fate] = run(event, ignore)
    assert (fate.effect, fate.latency_ns) == ("flushed", None)


def test_still_queued_is_pending_at_the_end_and_discarded_at_exit() -> None:
    event = sent(SIGUSR1, 1000)
    [fate] = run(event)
    assert (fate.effect, fate.ktime_ns) == ("pending", END)
    # Pending on the process (its shared queue): the process, no thread.
    assert fate.to_dict()["thread"] == {"pid": PID, "tid": None, "comm": "target"}
    [fate] = run(sent(SIGUSR1, 1000, tid=WORKER, group=False, via="tgkill"))
    assert fate.to_dict()["thread"] == {"pid": PID, "tid": WORKER, "comm": "target"}
    event = sent(SIGUSR1, 1000)
    [fate] = run(event, exited(2000, 0))
    assert (fate.effect, fate.exit_code) == ("discarded", 0)


def test_records_are_processed_in_kernel_time_order_up_to_the_horizon() -> None:
    tracker = FateTracker()
    early_deliver = deliver(SIGUSR1, 3000, handler=0x5000)
    tracker.add_records([early_deliver])  # read before the signal's own record
    assert tracker.advance(2000) == []
    event = sent(SIGUSR1, 1000)
    tracker.add_events([event])
    assert tracker.advance(2500) == []  # the delivery is beyond the horizon: held
    assert tracker.held == 1
    [fate] = tracker.advance(3001)
    assert fate.id == event.id and tracker.held == 0


def test_unmatched_and_untracked_are_counted() -> None:
    tracker = FateTracker(max_pending=1)
    tracker.add_events([sent(SIGUSR1, 1), sent(12, 2)])
    tracker.add_records([deliver(SIGTERM, 3)])
    tracker.advance(END)
    assert (tracker.untracked, tracker.unmatched, tracker.pending) == (1, 1, 1)


def test_formatting() -> None:
    assert [format_latency(n) for n in (850, 3_400, 12_000, 3_400_000, 120_000_000,
                                        1_250_000_000, None)] == [
        "850ns", "3.4us", "12us", "3.4ms", "120ms", "1.2s", "-"]
    assert flag_names(0x4 | 0x20000) == ["SA_SIGINFO", "0x20000"]


def test_outputs_tie_the_fate_to_its_signal() -> None:
    event = sent(SIGUSR1, 1_000_000_000)
    [fate] = run(event, deliver(SIGUSR1, 1_000_012_000, tid=WORKER, handler=0xABC,
                                flags=SA_SIGINFO))
    text = io.StringIO()
    writer = TextWriter(text, fate=True)
    writer.header()
    writer.events([event, fate])
    header, send_line, fate_line = text.getvalue().splitlines()
    assert header.split()[:2] == ["TIME", "ID"] and header.split()[-2:] == ["LAT", "FATE"]
    assert f"#{event.id} " in send_line and send_line.endswith("...")
    assert f"->#{event.id} " in fate_line and fate_line.endswith("12us handled 0xabc SA_SIGINFO")
    out = io.StringIO()
    JsonWriter(out).events([event, fate])
    signal_obj, fate_obj = (json.loads(line) for line in out.getvalue().splitlines())
    assert signal_obj["type"] == "signal" and fate_obj["type"] == "fate"
    assert fate_obj["id"] == signal_obj["id"]
    assert fate_obj["thread"] == {"pid": PID, "tid": WORKER, "comm": "target"}
    assert (fate_obj["latency_ns"], fate_obj["disposition"], fate_obj["handler"],
            fate_obj["effect"], fate_obj["flags"]) == (12_000, "handler", "0xabc", "handled",
                                                       ["SA_SIGINFO"])


def test_group_death_discards_every_queue_of_the_process_and_forgets_them() -> None:
    tracker = FateTracker()
    shared = sent(SIGUSR1, 1000)
    private = sent(12, 1100, tid=WORKER, group=False, via="tgkill")
    tracker.add_events([shared, private])
    tracker.add_records([exited(2000, 0)])
    fates = tracker.advance(END)
    assert sorted((f.id, f.effect) for f in fates) == [(shared.id, "discarded"),
                                                       (private.id, "discarded")]
    assert tracker.pending == 0
    # The pid is reused: its new signals are followed afresh.
    again = sent(SIGUSR1, 3000)
    tracker.add_events([again])
    tracker.add_records([deliver(SIGUSR1, 3500, handler=0x5000)])
    [fate] = tracker.advance(END)
    assert (fate.id, fate.effect) == (again.id, "handled")


# --- --fate on a kernel with neither BTF nor sched_process_exit's group_dead (before 6.16):
# every thread exit is written with FLAG_GROUP_UNKNOWN, and what it cannot tell is unknown.


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
