from __future__ import annotations

import pytest

from sigscope.bpf import privileges
from sigscope.bpf.privileges import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    PrivilegeError,
    check_privileges,
    effective_capabilities,
)

STATUS_TEMPLATE = "Name:\tpython3\nCapInh:\t0000000000000000\nCapPrm:\t{0}\nCapEff:\t{0}\n"


def status_with(mask: int) -> str:
    return STATUS_TEMPLATE.format(f"{mask:016x}")


def test_parses_cap_eff() -> None:
    assert effective_capabilities(status_with(0x000001FFFEFFFFFF)) == 0x000001FFFEFFFFFF


@pytest.mark.parametrize(
    "mask",
    [
        1 << CAP_SYS_ADMIN,
        (1 << CAP_BPF) | (1 << CAP_PERFMON),
        0x000001FFFEFFFFFF,  # root without CAP_SYS_RESOURCE, as on our CI machine
    ],
)
def test_enough_capabilities(mask: int) -> None:
    check_privileges(effective_capabilities(status_with(mask)))


@pytest.mark.parametrize("mask", [0, 1 << CAP_BPF, 1 << CAP_PERFMON, (1 << 24) | (1 << 12)])
def test_missing_capabilities_give_one_clear_line(mask: int) -> None:
    with pytest.raises(PrivilegeError) as caught:
        check_privileges(effective_capabilities(status_with(mask)))
    assert str(caught.value) == "sigscope needs root or CAP_BPF and CAP_PERFMON (run with sudo)"


def test_effective_capabilities_reads_proc_self_status() -> None:
    with open("/proc/self/status") as status:
        cap_eff = next(line for line in status if line.startswith("CapEff:"))
    assert effective_capabilities() == int(cap_eff.split()[1], 16)


def test_check_privileges_judges_this_process_by_its_own_mask() -> None:
    mask = effective_capabilities()
    enough = bool(mask >> CAP_SYS_ADMIN & 1) or (
        bool(mask >> CAP_BPF & 1) and bool(mask >> CAP_PERFMON & 1))
    if enough:
        check_privileges()
    else:
        with pytest.raises(PrivilegeError):
            check_privileges()


def test_raise_memlock_limit_never_raises(monkeypatch) -> None:
    def refuse(*_args):
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(privileges.resource, "setrlimit", refuse)
    assert privileges.raise_memlock_limit() is False


def test_raise_memlock_limit_asks_for_infinity(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(privileges.resource, "setrlimit",
                        lambda which, limits: calls.append((which, limits)))
    assert privileges.raise_memlock_limit() is True
    infinity = privileges.resource.RLIM_INFINITY
    assert calls == [(privileges.resource.RLIMIT_MEMLOCK, (infinity, infinity))]
