"""Shared test policy.

Kernel tests (marked ``kernel``, or living under tests/kernel/) need root, BPF and tracefs. Outside
CI they skip when those are missing; under ``CI=true`` a kernel test may not skip itself: any skip
there is reported as a failure, so a green CI always means the real kernel paths ran.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not os.path.exists("/proc/sys/kernel/bpf_stats_enabled"):
        return "kernel has no BPF"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/kernel/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kernel)


def pytest_runtest_setup(item):
    if item.get_closest_marker("kernel") is None:
        return
    reason = _kernel_unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}: kernel tests may not skip in CI")
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("kernel") is not None:
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped under CI=true: {report.longrepr}"
