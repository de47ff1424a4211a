"""Outputs: the storm path (Decoder.runs -> writer.runs) writes exactly what the Event path
writes, for JSON Lines (each line exactly Event.to_dict()) and for the text table."""

from __future__ import annotations

import io
import json
from pathlib import Path

from records import call, fake_proc, fanout, pack, recipient

from sigscope.decode import Decoder, ProcResolver
from sigscope.model import record as rec
from sigscope.model.event import Event
from sigscope.outputs.trace import JsonWriter


def mixed_batch() -> bytes:
    """A storm of equal records, a failure, a kernel signal, a call with fan-out, a % in a comm."""
    records = [call(call_id=1000 + i, ret=0, via="tgkill", arg_pid=700, arg_tid=701,
                    **recipient(701, group=0)) for i in range(50)]
    records.append(call(call_id=3000, ret=-3, arg_pid=999999))
    records.append(pack(kind=rec.KIND_KERNEL, via=rec.VIA_KERNEL, sig=17, ktime_ns=4000,
                        sender_comm=b"100%done", **recipient(700)))
    records.append(call(call_id=5000, ret=0, arg_pid=-700, nemitted=2, **recipient(700)))
    records.append(fanout(5000, 1, 702))
    records.append(fanout(5000, 2, 703))
    records += [call(call_id=6000 + i, ret=0, via="kill", arg_pid=702, **recipient(702))
                for i in range(5)]
    return b"".join(records)


def test_render_equals_the_event_path(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {700: (700, "leader"), 701: (700, "worker"),
                                         702: (702, "other"), 703: (703, "third")})
    batch = mixed_batch()
    by_events, by_lines = io.StringIO(), io.StringIO()
    events = Decoder(ProcResolver(str(proc)), wall_offset_ns=7).decode(batch)
    JsonWriter(by_events).events(events)
    writer = JsonWriter(by_lines)
    writer.runs(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).runs(batch))
    assert by_lines.getvalue() == by_events.getvalue()
    lines = by_lines.getvalue().splitlines()
    assert len(lines) == len(events) == 50 + 1 + 1 + 3 + 5
    for line, event in zip(lines, events, strict=True):
        assert json.loads(line) == event.to_dict()


def test_every_line_is_to_dict_across_seconds() -> None:
    # Records a second apart cross the cached timestamp text.
    batch = b"".join(call(call_id=t, ktime_ns=t, ret=0, arg_pid=1) for t in
                     (1_999_999_000, 2_000_000_000, 2_000_000_001, 3_500_000_000))
    out = io.StringIO()
    writer = JsonWriter(out)
    decoder = Decoder(wall_offset_ns=0)
    writer.runs(decoder.runs(batch))
    times = [json.loads(line)["time"] for line in out.getvalue().splitlines()]
    assert times == ["1970-01-01T00:00:01.999999Z", "1970-01-01T00:00:02.000000Z",
                     "1970-01-01T00:00:02.000000Z", "1970-01-01T00:00:03.500000Z"]
    assert decoder.records == 4


def test_text_table_render_equals_the_event_path(tmp_path: Path) -> None:
    from sigscope.outputs.trace import TextWriter

    proc = fake_proc(tmp_path / "proc", {700: (700, "leader"), 701: (700, "worker"),
                                         702: (702, "other"), 703: (703, "third")})
    batch = mixed_batch()
    by_events, by_lines = io.StringIO(), io.StringIO()
    TextWriter(by_events).events(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).decode(batch))
    writer = TextWriter(by_lines)
    assert writer.renders_lines and not TextWriter(io.StringIO(), relative=True).renders_lines
    writer.runs(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).runs(batch))
    assert by_lines.getvalue() == by_events.getvalue()
    first = by_lines.getvalue().splitlines()[0].split()
    assert first[1:] == ["500", "501", "sender", "tgkill", "SIGUSR1", "700", "701", "target",
                         "0", "delivered"]


def test_runs_group_equal_records_and_number_them_in_order(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {700: (700, "leader"), 701: (700, "worker"),
                                         702: (702, "other"), 703: (703, "third")})
    runs = Decoder(ProcResolver(str(proc)), wall_offset_ns=7).runs(mixed_batch())
    kinds = [("event", item.id) if isinstance(item, Event) else ("run", count)
             for item, count in zip(runs.items, runs.lengths, strict=True)]
    # 50 equal tgkills, the failure, the kernel signal, the fan-out call and its two
    # recipients (Events off the hot path, ids 53-55), then 5 equal kills.
    assert kinds == [("run", 50), ("run", 1), ("run", 1), ("event", 53), ("event", 54),
                     ("event", 55), ("run", 5)]
    assert (runs.first_id, runs.wall_offset_ns, len(runs)) == (1, 7, 60)
    shape = runs.items[0]
    assert not isinstance(shape, Event)
    assert (shape.via, shape.target_tid) == ("tgkill", 701)
    assert runs.ktimes[:50] == [1010 + i for i in range(50)]
    assert [e.id for e in runs.events()] == list(range(1, 61))


def test_text_shows_what_a_send_that_reached_nobody_addressed(tmp_path: Path) -> None:
    """No recipient (a failed send, a signal 0): TPID and TTID show the call's arguments in
    parentheses, never as a bare number that would read as a recipient; a recipient is a bare
    number; JSON keeps `args` as passed."""
    from sigscope.outputs.trace import TextWriter

    proc = fake_proc(tmp_path / "proc", {700: (700, "leader"), 701: (700, "worker")})
    batch = b"".join([
        call(call_id=1000, ret=-3, arg_pid=-99999, sig=0),                     # kill(-99999, 0)
        call(call_id=2000, ret=-3, arg_pid=4194304),                            # kill(4194304, .)
        call(call_id=3000, ret=0, arg_pid=-1, sig=0),                           # kill(-1, 0)
        call(call_id=4000, ret=-1, via="tgkill", arg_pid=700, arg_tid=701),     # EPERM
        call(call_id=5000, ret=-3, via="tkill", arg_pid=-4194304),              # tkill(tid)
        call(call_id=6000, ret=0, arg_pid=-700, **recipient(701)),  # a recipient
    ])
    events = Decoder(ProcResolver(str(proc)), wall_offset_ns=7).decode(batch)
    out = io.StringIO()
    writer = TextWriter(out)
    writer.header()
    writer.events(events)
    header, *rows = out.getvalue().splitlines()
    start = header.index("PID") + len("PID")  # the columns after TIME and PID
    cells = [row[start:].split()[:6] for row in rows]
    assert [(c[4], c[5]) for c in cells] == [
        ("(-99999)", "-"), ("(4194304)", "-"), ("(-1)", "-"), ("(700)", "(701)"),
        ("-", "(-4194304)"), ("700", "701")]
    for row in rows:  # the widest argument a pid_t can address still fits its column
        assert row.index(row[start:].split()[7], header.index("RESULT")) == \
            header.index("RESULT"), row
    assert [json.loads(JsonWriter(io.StringIO())._dumps(e.to_dict()))["args"]["pid"]
            for e in events[:3]] == [-99999, 4194304, -1]
    assert events[0].to_dict()["target"] == {"pid": None, "tid": None, "comm": None,
                                           "cgroup_id": None, "ns_pid": None, "ns_tid": None,
                                           "source": None, "container": None}

    by_lines = io.StringIO()
    TextWriter(by_lines).runs(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).runs(batch))
    assert by_lines.getvalue().splitlines() == rows  # the storm path says the same
