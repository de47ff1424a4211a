"""tracefs format parsing against this kernel's real format files, and tracefs discovery."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sigscope.bpf import tracefs
from sigscope.bpf.tracefs import Field, TracefsError, event_format, locate_tracefs, parse_format

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"

SIGNAL_SYSCALLS = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
)
ALL_FIXTURE_EVENTS = [
    ("signal", "signal_generate"),
    ("signal", "signal_deliver"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_fork"),
] + [
    ("syscalls", f"sys_{phase}_{name}") for name in SIGNAL_SYSCALLS for phase in ("enter", "exit")
]

COMMON_FIELDS = {
    "common_type": Field("common_type", "unsigned short", 0, 2, False),
    "common_flags": Field("common_flags", "unsigned char", 2, 1, False),
    "common_preempt_count": Field("common_preempt_count", "unsigned char", 3, 1, False),
    "common_pid": Field("common_pid", "int", 4, 4, True),
}


def fixture_format(system: str, name: str) -> tracefs.EventFormat:
    return parse_format((FIXTURES / system / name / "format").read_text(), system=system)


@pytest.mark.parametrize(("system", "name"), ALL_FIXTURE_EVENTS)
def test_every_fixture_parses_with_common_fields(system, name):
    fmt = fixture_format(system, name)
    assert fmt.name == name
    assert fmt.system == system
    assert fmt.id > 0
    for common_name, expected in COMMON_FIELDS.items():
        assert fmt.field(common_name) == expected


def test_signal_generate_layout():
    fmt = fixture_format("signal", "signal_generate")
    assert fmt.field("sig") == Field("sig", "int", 8, 4, True)
    assert fmt.field("errno") == Field("errno", "int", 12, 4, True)
    assert fmt.field("code") == Field("code", "int", 16, 4, True)
    assert fmt.field("comm") == Field("comm", "char", 20, 16, False, array_len=16)
    assert fmt.field("pid") == Field("pid", "pid_t", 36, 4, True)
    assert fmt.field("group") == Field("group", "int", 40, 4, True)
    assert fmt.field("result") == Field("result", "int", 44, 4, True)
    assert list(fmt.fields)[4:] == ["sig", "errno", "code", "comm", "pid", "group", "result"]


def test_signal_deliver_layout_has_unsigned_long_fields():
    fmt = fixture_format("signal", "signal_deliver")
    assert fmt.field("sig") == Field("sig", "int", 8, 4, True)
    assert fmt.field("code") == Field("code", "int", 16, 4, True)
    assert fmt.field("sa_handler") == Field("sa_handler", "unsigned long", 24, 8, False)
    assert fmt.field("sa_flags") == Field("sa_flags", "unsigned long", 32, 8, False)


def test_sched_process_exit_layout():
    fmt = fixture_format("sched", "sched_process_exit")
    assert fmt.field("comm") == Field("comm", "char", 8, 16, False, array_len=16)
    assert fmt.field("pid") == Field("pid", "pid_t", 24, 4, True)
    assert fmt.field("group_dead") == Field("group_dead", "bool", 32, 1, False)


def test_sched_process_fork_data_loc_fields():
    fmt = fixture_format("sched", "sched_process_fork")
    parent_comm = fmt.field("parent_comm")
    assert parent_comm == Field("parent_comm", "char", 8, 4, False, None, data_loc=True)
    assert fmt.field("child_comm").data_loc
    assert fmt.field("child_comm").offset == 16
    assert fmt.field("parent_pid") == Field("parent_pid", "pid_t", 12, 4, True)
    assert fmt.field("child_pid") == Field("child_pid", "pid_t", 20, 4, True)


def test_sys_enter_tgkill_arguments_are_8_byte_slots():
    fmt = fixture_format("syscalls", "sys_enter_tgkill")
    assert fmt.field("__syscall_nr") == Field("__syscall_nr", "int", 8, 4, True)
    assert fmt.field("tgid") == Field("tgid", "pid_t", 16, 8, False)
    assert fmt.field("pid") == Field("pid", "pid_t", 24, 8, False)
    assert fmt.field("sig") == Field("sig", "int", 32, 8, False)


def test_sys_enter_pointer_types():
    fmt = fixture_format("syscalls", "sys_enter_rt_tgsigqueueinfo")
    assert fmt.field("uinfo") == Field("uinfo", "siginfo_t *", 40, 8, False)
    fmt = fixture_format("syscalls", "sys_enter_pidfd_send_signal")
    assert [f.name for f in fmt.fields.values()][5:] == ["pidfd", "sig", "info", "flags"]
    assert fmt.field("flags") == Field("flags", "unsigned int", 40, 8, False)


@pytest.mark.parametrize("name", SIGNAL_SYSCALLS)
def test_sys_exit_ret(name):
    fmt = fixture_format("syscalls", f"sys_exit_{name}")
    assert fmt.field("ret") == Field("ret", "long", 16, 8, True)


def test_ids_are_distinct():
    ids = [fixture_format(system, name).id for system, name in ALL_FIXTURE_EVENTS]
    assert len(set(ids)) == len(ids)


def test_missing_field_names_event_and_field():
    fmt = fixture_format("signal", "signal_generate")
    with pytest.raises(TracefsError, match=r"signal:signal_generate has no field 'nope'"):
        fmt.field("nope")


def test_declarations_with_spaces_pointers_and_multidim_arrays():
    text = (
        "name: synthetic\nID: 7\nformat:\n"
        "\tfield:const char * filename;\toffset:8;\tsize:8;\tsigned:0;\n"
        "\tfield:unsigned long long ts;\toffset:16;\tsize:8;\tsigned:0;\n"
        "\tfield:u8 grid[2][3];\toffset:24;\tsize:6;\tsigned:0;\n"
        "\tfield:char buf[];\toffset:30;\tsize:0;\tsigned:1;\n"
        "\tfield:__rel_loc char[] rel;\toffset:32;\tsize:4;\tsigned:0;\n"
        "\tfield:int nosign;\toffset:36;\tsize:4;\n"
        "\nprint fmt: \"x\", REC->ts\nfield: this line is after print fmt and ignored\n"
    )
    fmt = parse_format(text)
    assert fmt.id == 7 and fmt.name == "synthetic"
    assert fmt.field("filename") == Field("filename", "const char *", 8, 8, False)
    assert fmt.field("ts").type == "unsigned long long"
    assert fmt.field("grid").array_len == 6
    assert fmt.field("buf") == Field("buf", "char", 30, 0, True, array_len=0)
    assert fmt.field("rel") == Field("rel", "char", 32, 4, False, None, data_loc=True, rel_loc=True)
    assert fmt.field("nosign").signed is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        "name: x\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",  # no ID
        "name: x\nID: 1\nformat:\n",  # no fields
        "name: x\nID: abc\n",
        "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:eight;\tsize:4;\tsigned:1;\n",
        "name: x\nID: 1\nformat:\n\tfield:;\toffset:8;\tsize:4;\tsigned:1;\n",
    ],
)
def test_garbage_is_a_tracefs_error(text):
    with pytest.raises(TracefsError) as info:
        parse_format(text)
    assert "\n" not in str(info.value)


# --- discovery -------------------------------------------------------------------------------


def make_tracefs(path: Path) -> Path:
    (path / "events").mkdir(parents=True)
    return path


def refuse_mount(target: Path) -> None:
    raise AssertionError(f"must not mount {target}")


def test_locate_prefers_first_candidate_with_events(tmp_path):
    first = tmp_path / "tracing"
    first.mkdir()  # exists but empty: not a mounted tracefs
    second = make_tracefs(tmp_path / "debug" / "tracing")
    assert locate_tracefs([first, second], first, mount=refuse_mount) == second
    make_tracefs_events = first / "events"
    make_tracefs_events.mkdir()
    assert locate_tracefs([first, second], first, mount=refuse_mount) == first


def test_locate_mounts_when_nothing_found(tmp_path):
    target = tmp_path / "tracing"
    target.mkdir()
    mounted = []

    def fake_mount(path: Path) -> None:
        mounted.append(path)
        (path / "events").mkdir()

    assert locate_tracefs([target, tmp_path / "nope"], target, mount=fake_mount) == target
    assert mounted == [target]


def test_locate_reports_mount_failure_on_one_line(tmp_path):
    target = tmp_path / "tracing"

    def failing_mount(path: Path) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    with pytest.raises(TracefsError) as info:
        locate_tracefs([target], target, mount=failing_mount)
    assert str(info.value) == (
        f"tracefs is not mounted and mounting it on {target} failed: Operation not permitted"
    )


def test_locate_mount_without_events_dir(tmp_path):
    with pytest.raises(TracefsError, match="no events/ directory"):
        locate_tracefs([tmp_path / "a"], tmp_path, mount=lambda path: None)


def test_locate_without_mounting(tmp_path):
    with pytest.raises(TracefsError, match="tracefs is not mounted"):
        locate_tracefs([tmp_path / "a"], tmp_path, mount=None)


def test_event_format_and_available_from_a_fake_root(tmp_path):
    root = tmp_path / "tracing"
    target = root / "events" / "signal" / "signal_generate"
    target.mkdir(parents=True)
    (target / "format").write_text((FIXTURES / "signal/signal_generate/format").read_text())
    fmt = event_format("signal", "signal_generate", root)
    assert (fmt.system, fmt.name) == ("signal", "signal_generate")
    assert fmt.field("sig").offset == 8
    assert event_format("signal", "signal_generate", root) is fmt  # cached
    assert tracefs.available("signal", "signal_generate", root)
    assert not tracefs.available("signal", "foo", root)
    with pytest.raises(TracefsError) as info:
        event_format("signal", "foo", root)
    assert str(info.value) == (
        f"tracepoint signal:foo not found in {root / 'events'} (kernel too old or CONFIG missing?)"
    )


def test_event_format_reports_malformed_file_with_its_path(tmp_path):
    root = tmp_path / "tracing"
    target = root / "events" / "bad" / "event"
    target.mkdir(parents=True)
    (target / "format").write_text("garbage\n")
    with pytest.raises(TracefsError, match=r"bad/event/format: not a tracepoint format"):
        event_format("bad", "event", root)
