"""The live kernel's tracefs: found, and its signal-related formats parse with the fields we use."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigscope.bpf import tracefs
from sigscope.bpf.tracefs import TracefsError, event_format, parse_format, tracefs_root

EXPECTED_FIELDS = {
    ("signal", "signal_generate"): {"sig", "errno", "code", "comm", "pid", "group", "result"},
    ("signal", "signal_deliver"): {"sig", "errno", "code", "sa_handler", "sa_flags"},
    ("sched", "sched_process_exit"): {"comm", "pid"},
    ("sched", "sched_process_fork"): {"parent_pid", "child_pid", "child_comm"},
    ("syscalls", "sys_enter_kill"): {"pid", "sig"},
    ("syscalls", "sys_enter_tkill"): {"pid", "sig"},
    ("syscalls", "sys_enter_tgkill"): {"tgid", "pid", "sig"},
    ("syscalls", "sys_enter_rt_sigqueueinfo"): {"pid", "sig", "uinfo"},
    ("syscalls", "sys_enter_rt_tgsigqueueinfo"): {"tgid", "pid", "sig", "uinfo"},
    ("syscalls", "sys_enter_pidfd_send_signal"): {"pidfd", "sig", "info", "flags"},
    ("syscalls", "sys_exit_kill"): {"ret"},
    ("syscalls", "sys_exit_tkill"): {"ret"},
    ("syscalls", "sys_exit_tgkill"): {"ret"},
    ("syscalls", "sys_exit_rt_sigqueueinfo"): {"ret"},
    ("syscalls", "sys_exit_rt_tgsigqueueinfo"): {"ret"},
    ("syscalls", "sys_exit_pidfd_send_signal"): {"ret"},
}


def test_tracefs_root_has_events():
    root = Path(tracefs_root())
    assert (root / "events" / "signal").is_dir()


@pytest.mark.parametrize(("system", "name"), sorted(EXPECTED_FIELDS))
def test_live_format_has_expected_fields(system, name):
    assert tracefs.available(system, name)
    fmt = event_format(system, name)
    assert fmt.name == name and fmt.system == system
    live_id = int((Path(tracefs_root()) / "events" / system / name / "id").read_text())
    assert fmt.id == live_id
    assert EXPECTED_FIELDS[(system, name)] | {"common_type", "common_pid"} <= set(fmt.fields)
    # The fields tile the record: sizes as their types say, in order, never overlapping.
    fields = sorted(fmt.fields.values(), key=lambda f: f.offset)
    for field, following in zip(fields, fields[1:], strict=False):
        assert field.size > 0, field
        assert field.offset + field.size <= following.offset, (field, following)
    assert fmt.fields["common_type"].offset == 0 and fmt.fields["common_type"].size == 2


def test_every_live_format_parses():
    """Robustness: every event on this kernel parses, not just the ones we use."""
    events = Path(tracefs_root()) / "events"
    failures = []
    count = 0
    for format_file in events.glob("*/*/format"):
        count += 1
        try:
            parse_format(format_file.read_text())
        except TracefsError as exc:
            failures.append(f"{format_file}: {exc}")
    assert count > 100
    assert failures == []


def test_missing_live_event_is_one_clear_line():
    assert not tracefs.available("signal", "no_such_event")
    with pytest.raises(TracefsError) as info:
        event_format("signal", "no_such_event")
    message = str(info.value)
    assert message.startswith("tracepoint signal:no_such_event not found in ")
    assert "\n" not in message
