"""The session detaches by program role (entries first), whatever the tracepoints are called,
and the plans of the signal probes say which role each program has. Fakes stand in for the
kernel's attachments; the plans are built from this kernel's tracefs formats (fixtures)."""

from __future__ import annotations

from pathlib import Path

from sigscope.bpf.tracefs import parse_format
from sigscope.model.filters import Filters
from sigscope.programs import signal as probes
from sigscope.programs.common import ProgramPlan, RingbufOutput, Role
from sigscope.session import DETACH_ORDER, detach_in_order

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"


class FakeAttachment:
    def __init__(self, name: str, closed_in: list[str]) -> None:
        self.name = name
        self.closed = False
        self._closed_in = closed_in

    def close(self) -> None:
        self.closed = True
        self._closed_in.append(self.name)


def test_entries_are_detached_before_every_other_role() -> None:
    order: list[str] = []
    # Named against the grain: an entry whose tracepoint says nothing of sys_enter, and a fate
    # program on a sys_enter tracepoint. The role decides, not the name.
    pairs = [
        (Role.EXIT, FakeAttachment("exit", order)),
        (Role.FATE, FakeAttachment("syscalls:sys_enter_rt_sigaction", order)),
        (Role.ENTRY, FakeAttachment("raw:kill", order)),
        (Role.GENERATE, FakeAttachment("generate", order)),
        (Role.ENTRY, FakeAttachment("raw:tgkill", order)),
    ]
    attachments = list(pairs)
    detach_in_order(attachments)  # type: ignore[arg-type]
    assert attachments == []
    assert all(a.closed for _, a in pairs)
    assert sorted(order[:2]) == ["raw:kill", "raw:tgkill"]
    assert set(order[2:]) == {"exit", "syscalls:sys_enter_rt_sigaction", "generate"}


def test_every_role_has_a_place_in_the_detach_order() -> None:
    placed = [role for group in DETACH_ORDER for role in group]
    assert sorted(placed, key=lambda r: r.value) == sorted(Role, key=lambda r: r.value)
    assert DETACH_ORDER[0] == frozenset({Role.ENTRY})


def test_signal_probe_plans_carry_their_roles(monkeypatch) -> None:
    monkeypatch.setattr(probes, "event_format", lambda system, name: parse_format(
        (FIXTURES / system / name / "format").read_text()))
    cfg = probes.ProbeConfig(Filters(), RingbufOutput(4, 5), probes.MapFds(3, 5),
                             claim=probes.CLAIM_TID_HASH)
    plans = list(probes.signal_probe_plans(cfg, prefix="s"))
    assert all(isinstance(plan, ProgramPlan) for plan in plans)
    roles = {event: plan.role for plan in plans for _, event in plan.tracepoints}
    calls = probes.syscalls_to_trace(cfg.filters)
    assert roles == {"signal_generate": Role.GENERATE,
                     **{f"sys_enter_{call}": Role.ENTRY for call in calls},
                     **{f"sys_exit_{call}": Role.EXIT for call in calls}}
    # Attach order: exits, then generate, then entries (a call seen entering is seen leaving).
    assert [plan.role for plan in plans] == sorted(
        (plan.role for plan in plans),
        key=[Role.EXIT, Role.GENERATE, Role.ENTRY].index)
    assert all(len(plan.name) <= 15 for plan in plans)
