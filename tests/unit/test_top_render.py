"""sigscope top without a kernel: key resolution, interval diffs, table and JSON, CLI parsing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sigscope import top
from sigscope.bpf import asm
from sigscope.bpf.tracefs import parse_format
from sigscope.cli.main import build_parser, main
from sigscope.errors import UsageError
from sigscope.model import record as rec
from sigscope.model.filters import Filters
from sigscope.programs import count as top_probes
from sigscope.programs import signal as signal_probes

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def raw_key(sender=100, target=200, sig=10, via="kill", result=0, outcome=0,
            sender_comm=b"snd", target_comm=b"tgt") -> bytes:
    return top_probes.KEY_STRUCT.pack(sender, target, sig, rec.VIA_CODES[via], result, outcome,
                                      0, sender_comm.ljust(16, b"\0"),
                                      target_comm.ljust(16, b"\0"))


class FakeProc:
    """What /proc would say: thread 201 belongs to process 200; pidfd 7 of 100 is pid 300."""

    def tgid(self, tid, now):
        return {200: 200, 201: 200, 300: 300}.get(tid)

    def comm(self, pid, now):
        return {200: "tgt", 300: "viafd"}.get(pid)

    def pidfd_pid(self, holder, fd):
        return 300 if (holder, fd) == (100, 7) else None


def resolver() -> top.KeyResolver:
    return top.KeyResolver(FakeProc())  # type: ignore[arg-type]


def test_key_layout_is_64_bytes_and_aligned() -> None:
    assert top_probes.KEY_SIZE == 64
    names = [name for name, _ in top_probes.KEY_FIELDS]
    fields = dict(zip(names, top_probes.KEY_STRUCT.unpack(raw_key()), strict=True))
    assert fields["sender_tgid"] == 100 and fields["target_pid"] == 200
    assert fields["outcome"] == 0 and fields["sender_comm"].startswith(b"snd")


def test_thread_targets_merge_into_their_process() -> None:
    resolve = resolver()
    by_thread = resolve(raw_key(via="tkill", target=201))
    by_process = resolve(raw_key(via="tkill", target=200))
    assert by_thread == by_process and by_thread.target_pid == 200


def test_resolution_of_each_target_kind() -> None:
    resolve = resolver()
    failed_kill_group = resolve(raw_key(target=-5, result=-3, outcome=rec.GEN_NONE))
    assert failed_kill_group.target_pid is None and failed_kill_group.target_comm is None
    assert failed_kill_group.error == "ESRCH" and failed_kill_group.outcome is None
    via_pidfd = resolve(raw_key(via="pidfd_send_signal", target=7, result=-1,
                                outcome=rec.GEN_NONE))
    # Nothing generated: the kernel named no target task, so its name is unknown (no /proc
    # guess at read time, which could name whoever holds the pid by then).
    assert (via_pidfd.target_pid, via_pidfd.target_comm) == (300, None)
    tgkill = resolve(raw_key(via="tgkill", target=999, target_comm=b"thr"))
    assert (tgkill.target_pid, tgkill.target_comm) == (999, "thr")  # the tgid argument, as is
    kernel = resolve(raw_key(via="kernel", result=0, outcome=1))
    assert kernel.result is None and kernel.outcome == "ignored"
    gone = resolve(raw_key(target=4242, target_comm=b"exited"))
    assert (gone.target_pid, gone.target_comm) == (4242, "exited")


def key(sender=1, target=2, sig=10, via="kill", count_outcome="delivered") -> top.RowKey:
    return top.RowKey(sender, f"s{sender}", target, f"t{target}", sig, via,
                      None if via == "kernel" else 0, count_outcome)


def snap(rows, other=0, lost=0, t=0.0) -> top.Snapshot:
    return top.Snapshot(dict(rows), other, lost, len(rows), t)


def test_intervals_are_differences_and_add_up_to_the_total() -> None:
    a, b = key(), key(sig=12)
    tracker = top.IntervalTracker(start_monotonic=0.0)
    snapshots = [snap({a: 5}, t=1.0), snap({a: 5, b: 2}, other=1, t=2.0),
                 snap({a: 9, b: 2}, other=3, lost=1, t=2.5)]
    intervals = [tracker.next(s, final=(i == 2), wall=1000.0 + i)
                 for i, s in enumerate(snapshots)]
    assert [dict(i.rows) for i in intervals] == [{a: 5}, {b: 2}, {a: 4}]
    assert [i.other for i in intervals] == [0, 1, 2]
    assert [i.lost for i in intervals] == [0, 0, 1]
    assert [i.interval_s for i in intervals] == [1.0, 1.0, 0.5]
    assert sum(i.total for i in intervals) == snapshots[-1].total == 14
    assert intervals[2].rate(4) == 8.0


def test_json_object_has_the_documented_keys() -> None:
    interval = top.Interval(time=0.0, interval_s=2.0, rows=[(key(), 4), (key(sig=12), 6)],
                            other=1, lost=2, keys=2, final=True)
    obj = json.loads(json.dumps(top.interval_to_dict(interval)))
    assert {"type", "time", "interval_s", "rows", "total", "other", "lost"} <= set(obj)
    assert obj["type"] == "interval" and obj["time"] == "1970-01-01T00:00:00.000000Z"
    assert obj["total"] == 11 and obj["other"] == 1 and obj["lost"] == 2 and obj["final"]
    first = obj["rows"][0]
    assert first == {"sender": {"pid": 1, "comm": "s1"}, "target": {"pid": 2, "comm": "t2"},
                     "sig": 12, "signal": "SIGUSR2", "via": "kill", "result": 0, "error": None,
                     "outcome": "delivered", "count": 6, "rate": 3.0}
    assert len(top.interval_to_dict(interval, limit=1)["rows"]) == 1


@pytest.mark.parametrize("by", top.SORT_KEYS)
def test_sort_orders(by) -> None:
    rows = [(key(sender=1, target=9, sig=15), 3), (key(sender=2, target=1, sig=12), 7),
            (key(sender=3, target=5, sig=2), 1)]
    first = top.sort_rows(rows, by)[0]
    expected = {"count": (12, 7), "signal": (2, 1), "sender": (15, 3), "target": (12, 7)}[by]
    assert (first[0].sig, first[1]) == expected
    with pytest.raises(ValueError):
        top.sort_rows(rows, "size")


def test_table_shows_rows_rates_hidden_rows_and_totals() -> None:
    rows = [(key(sig=s), s) for s in (1, 2, 3, 15)]
    failed = top.RowKey(1, "s1", None, None, 9, "kill", -1, None)
    interval = top.Interval(time=0.0, interval_s=0.5, rows=rows + [(failed, 2)], other=4,
                            lost=1, keys=5)
    text = top.render_table(interval, limit=3, max_keys=10240)
    lines = text.splitlines()
    assert "COUNT" in lines[1] and "RATE/s" in lines[1]
    assert lines[2].split()[:3] == ["15", "30.0", "SIGTERM"]
    assert "(2 more rows)" in text
    assert lines[-1] == "total 27 (54.0/s), other 4, lost 1, keys 5/10240"
    everything = top.render_table(interval, limit=None)
    assert "EPERM" in everything and " - " in everything  # no target pid, no outcome


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_writer_redraws_only_on_a_terminal() -> None:
    interval = top.Interval(time=0.0, interval_s=1.0, rows=[(key(), 1)])
    tty, pipe, appended = Tty(), io.StringIO(), Tty()
    top.IntervalWriter(tty).write(interval)
    top.IntervalWriter(pipe).write(interval)
    top.IntervalWriter(appended, append=True).write(interval)
    assert tty.getvalue().startswith(top.CLEAR_SCREEN)
    assert top.CLEAR_SCREEN not in pipe.getvalue() + appended.getvalue()
    json_out = Tty()
    top.IntervalWriter(json_out, json_output=True).write(interval)
    assert json.loads(json_out.getvalue())["total"] == 1


def test_exporter_snapshot_maps_rows_and_health(monkeypatch) -> None:
    counter = top.Counter(Filters(), map_kind="hash")
    failed = top.RowKey(1, "s1", None, None, 9, "kill", -1, None)
    monkeypatch.setattr(counter, "read", lambda: snap({key(): 5, failed: 2}, other=3, lost=4))
    rows, health = counter.exporter_snapshot()
    by_error = {row.error: row for row in rows}
    assert by_error["EPERM"].count == 2 and by_error["EPERM"].target_pid is None
    assert by_error[None].signal == "SIGUSR1" and by_error[None].outcome == "delivered"
    assert (health.lost_events, health.map_full, health.other, health.records) == (4, 0, 3, 10)
    assert (health.keys, health.max_keys) == (2, top.DEFAULT_MAX_KEYS)


def test_counter_rejects_bad_settings() -> None:
    with pytest.raises(UsageError, match="max_keys="):
        top.Counter(max_keys=0)
    with pytest.raises(UsageError, match="map_kind="):
        top.Counter(map_kind="array")


def test_counting_programs_assemble_with_the_fixture_formats() -> None:
    # sys_exit formats are not among the fixtures; enter + generate cover the count output.
    gen = parse_format((FIXTURES / "signal" / "signal_generate" / "format").read_text())
    enter = parse_format((FIXTURES / "syscalls" / "sys_enter_kill" / "format").read_text())
    atomics = {}
    for percpu in (True, False):
        output = top_probes.CountOutput(counts=4, counters=5, percpu=percpu)
        cfg = signal_probes.ProbeConfig(Filters(comm="x", failed_only=False), output,
                                        signal_probes.MapFds(inflight=3, counters=5),
                                        claim=signal_probes.CLAIM_CMPXCHG)
        program = signal_probes.build_signal_generate(cfg, gen)
        generate = asm.resolve(program)
        assert asm.assemble(signal_probes.build_sys_enter(cfg, "kill", enter))
        text = asm.dump(program)
        assert "map_update_elem" in text and "ringbuf_output" not in text
        atomics[percpu] = sum(1 for i in generate if i.code == 0xDB)  # BPF_STX|BPF_ATOMIC|DW
    # The per-CPU map adds without atomics; only the shared "other" slot keeps them.
    assert atomics[False] > atomics[True] > 0


# --- the command line ---------------------------------------------------------------------

def test_top_options_parse() -> None:
    args = build_parser().parse_args(
        ["top", "-i", "2.5", "--sort", "target", "-n", "5", "-C", "-j", "-c", "oracle",
         "-s", "USR1", "-d", "10", "--prometheus", ":9567", "--labels", "signal,via",
         "--max-keys", "100", "--map-kind", "hash"])
    assert (args.interval, args.sort, args.rows, args.no_clear, args.json) == \
        (2.5, "target", 5, True, True)
    assert (args.comm, args.signal, args.duration, args.max_keys) == (
        ["oracle"], ["USR1"], 10, 100)


def test_daemonset_args_are_valid_top_options() -> None:
    yaml = pytest.importorskip("yaml")
    manifest = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "top" and parsed.prometheus and parsed.labels


@pytest.mark.parametrize("args, needle", [
    (["--prometheus", "nowhere"], "bad listen address"),
    (["--prometheus", ":1", "--labels", "pod"], "unknown label"),
    (["--labels", "via"], "--labels needs --prometheus"),
    (["--sort", "size"], "invalid choice"),
    (["-i", "0"], "must be positive"),
    (["--max-keys", "99999999"], "--max-keys: at most"),
])
def test_bad_input_is_one_line_exit_2(args, needle, capsys) -> None:
    assert main(["top", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_top_is_a_command_of_the_real_entry_point() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from sigscope.cli.main import main; "
                           "sys.exit(main())", "top", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=30)
    assert done.returncode == 0
    assert "--prometheus" in done.stdout and "--max-keys" in done.stdout


def test_exporter_keys_fold_to_the_labels() -> None:
    from sigscope.outputs.prometheus import DEFAULT_LABELS

    keep = top.key_fields(DEFAULT_LABELS)
    assert keep == {"sig", "via", "outcome", "sender_comm", "target_comm"}  # no pid at all
    assert {"target_pid", "via", "outcome", "sender_tgid"} <= top.key_fields(["target_pid"])
    with pytest.raises(UsageError, match="labels= has unknown 'pod'"):
        top.key_fields(["pod"])
    # What the programs store for such a key: pids and the result zeroed.
    resolve = top.KeyResolver(FakeProc(), keep=keep)  # type: ignore[arg-type]
    folded = resolve(raw_key(sender=0, target=0, result=0, outcome=0))
    assert (folded.sender_pid, folded.target_pid, folded.result) == (0, None, None)
    assert (folded.sender_comm, folded.target_comm, folded.signal, folded.outcome) == (
        "snd", "tgt", "SIGUSR1", "delivered")
    failed = resolve(raw_key(sender=0, target=0, result=0, outcome=rec.GEN_NONE,
                             target_comm=b""))
    assert failed.target_comm is None and failed.outcome is None
    with pytest.raises(UsageError, match="keep= has unknown"):
        top.Counter(keep=["pid"])


def test_count_programs_zero_the_fields_not_kept() -> None:
    from sigscope.programs import common

    labels = common.Labels()
    full = asm.dump(top_probes._build_key(6, labels))
    folded = asm.dump(top_probes._build_key(6, labels, frozenset({"sig", "via"})))
    assert len(folded.splitlines()) < len(full.splitlines())
    assert folded.count("= 0") >= 6  # sender, target, outcome, result, both comms' halves
