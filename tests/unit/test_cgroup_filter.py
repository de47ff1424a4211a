"""--cgroup/--container: the Filters field, the resolution of paths and prefixes to (id, level)
pairs, and the programs: without the filter not one instruction is added; with it every kind
of program (entry, generate, exit) compares cgroups. Built from the tracefs format fixtures and
fixed BTF layouts, not from this machine's kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigscope import cgroup_filter
from sigscope.bpf import asm
from sigscope.bpf.tracefs import parse_format
from sigscope.containers import CgroupMount
from sigscope.model.filters import FilterError, Filters, make_filters
from sigscope.programs import context
from sigscope.programs import signal as probes
from sigscope.programs.common import RingbufOutput, Role
from sigscope.programs.task import TaskLayout

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"
PIDS = context.PidLayout(thread_pid=1368, group_leader=1328, pid_level=4, pid_numbers=144,
                         upid_nr=0, upid_size=16)
CGROUPS = context.CgroupLayout(task_cgroups=2200, dfl_cgrp=136, level=216, kn=256, kn_id=96,
                               ancestor_ids=None, ancestors=2224)
RECIPIENT = probes.RecipientLayout(1264, 1268, 1640, (2200, 136, 256, 96))
TASK = TaskLayout(1264, 1268, 1640, 1616, 8)


@pytest.fixture(autouse=True)
def fixed_kernel(monkeypatch) -> None:
    monkeypatch.setattr(probes, "event_format", lambda system, name: parse_format(
        (FIXTURES / system / name / "format").read_text()))
    monkeypatch.setattr(context, "pid_layout", lambda: PIDS)
    monkeypatch.setattr(context, "cgroup_layout", lambda: CGROUPS)
    monkeypatch.setattr(context.features, "has", lambda name: True)
    monkeypatch.setattr(probes, "recipient_source_is_task", lambda: True)
    monkeypatch.setattr(probes, "recipient_layout", lambda: RECIPIENT)


def programs(filters: Filters, claim: str, task: TaskLayout | None,
             tp_btf: bool = True) -> dict[Role, list[bytes]]:
    cfg = probes.ProbeConfig(filters, RingbufOutput(4, 5), probes.MapFds(3, 5), claim=claim,
                             task=task, recipient_task=tp_btf)
    out: dict[Role, list[bytes]] = {}
    for plan in probes.signal_probe_plans(cfg):
        out.setdefault(plan.role, []).append(asm.assemble(plan.insns))
    return out


VARIANTS = [(claim, task, tp_btf) for claim in probes.CLAIMS for task in (None, TASK)
            for tp_btf in (True, False)]


@pytest.mark.parametrize(("claim", "task", "tp_btf"), VARIANTS)
def test_without_the_filter_no_instruction_is_added(monkeypatch, claim, task, tp_btf) -> None:
    built = programs(make_filters(), claim, task, tp_btf)
    for name in ("mark_sender_in_cgroups", "either_side_in_cgroups", "call_in_cgroups"):
        monkeypatch.setattr(context, name, lambda *args, **kw: [])
    monkeypatch.setattr(context, "recipient_of_call_in_cgroups",
                        lambda *args, **kw: pytest.fail("filter code emitted"))
    assert programs(make_filters(), claim, task, tp_btf) == built


@pytest.mark.parametrize(("claim", "task", "tp_btf"), VARIANTS)
def test_with_the_filter_every_kind_of_program_changes(claim, task, tp_btf) -> None:
    plain = programs(make_filters(), claim, task, tp_btf)
    filtered = programs(make_filters(cgroups=[(1234, 3)]), claim, task, tp_btf)
    assert set(plain) >= {Role.GENERATE, Role.EXIT}  # ENTRY: the three-probe path only
    for role in plain:
        assert all(a != b for a, b in zip(plain[role], filtered[role], strict=True)), role


def test_filters_validate_cgroup_pairs() -> None:
    assert make_filters(cgroups=[(5, 2)]).cgroups == frozenset({(5, 2)})
    for bad in ([(0, 1)], [(5, -1)], [(5, 2000)], [(1 << 64, 1)]):
        with pytest.raises(FilterError, match="cgroups="):
            make_filters(cgroups=bad)
    with pytest.raises(FilterError, match="at most"):
        make_filters(cgroups=[(i, 1) for i in range(1, 18)])


def test_paths_are_taken_below_the_mount_or_the_hierarchy(tmp_path) -> None:
    mount = CgroupMount(str(tmp_path), "/")
    assert cgroup_filter.relative_path(f"{tmp_path}/a/b", mount) == "/a/b"
    assert cgroup_filter.relative_path("/a//b/", mount) == "/a/b"
    assert cgroup_filter.relative_path("a/b", mount) == "/a/b"
    assert cgroup_filter.relative_path(str(tmp_path), mount) == "/"
    with pytest.raises(cgroup_filter.CgroupFilterError, match="'..'"):
        cgroup_filter.relative_path("a/../../etc", mount)


def test_bad_paths_and_prefixes_are_usage_errors(tmp_path) -> None:
    (tmp_path / "plain").mkdir()  # a directory, but no cgroup (no cgroup.procs)
    mount = CgroupMount(str(tmp_path), "/")
    for path in ("/no/such", "/plain"):
        with pytest.raises(cgroup_filter.CgroupFilterError, match="no such cgroup"):
            cgroup_filter.of_path(path, mount)
    (tmp_path / "plain" / "cgroup.procs").write_text("")  # now a cgroup; its file is not
    with pytest.raises(cgroup_filter.CgroupFilterError, match="not a cgroup directory"):
        cgroup_filter.of_path("/plain/cgroup.procs", mount)
    for empty in ("", "  "):  # not the root, which is spelled "/"
        with pytest.raises(cgroup_filter.CgroupFilterError, match="empty cgroup path"):
            cgroup_filter.of_path(empty, mount)
    for prefix in ("", "XYZ", "a" * 65, "abc/def"):
        with pytest.raises(cgroup_filter.CgroupFilterError, match="lowercase hex"):
            cgroup_filter.of_container(prefix)


def test_no_cgroup2_hierarchy_is_a_setup_error() -> None:
    with pytest.raises(cgroup_filter.CgroupUnavailableError, match="cgroup v1 only"):
        cgroup_filter.of_path("/x", None)


def test_levels_count_from_the_hierarchy_root(tmp_path) -> None:
    # The root (no cgroup.type) is level 0 however mountinfo names it; a subtree mounted on its
    # own counts its mountinfo root's depth; inside a cgroup namespace there is no depth.
    assert cgroup_filter._root_depth(CgroupMount(str(tmp_path), "/../..")) == 0
    (tmp_path / "cgroup.type").write_text("domain\n")
    assert cgroup_filter._root_depth(CgroupMount(str(tmp_path), "/a/b")) == 2
    for root in ("/", "/../x"):
        with pytest.raises(cgroup_filter.CgroupUnavailableError, match="depth is unknown"):
            cgroup_filter._root_depth(CgroupMount(str(tmp_path), root))
