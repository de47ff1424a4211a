"""Shared test policy.

Kernel tests (marked ``kernel``, or living under tests/kernel/) need root, BPF and tracefs. Outside
CI they skip when those are missing; under ``CI=true`` a kernel test may not skip itself: any skip
there is reported as a failure, so a green CI always means the real kernel paths ran.

Kernel features (names of sigscope.bpf.features.FEATURES): a test that needs one says so with
``@pytest.mark.needs("perf_event_link")`` or calls ``require_feature("perf_event_link")``. The
kernel-matrix runner sets ``SIGSCOPE_EXPECT_MISSING`` (a comma list of the features its table
says the guest kernel lacks; unset on the host, where nothing is expected missing). Then:

- present, but listed missing: FAIL (the table or the probe is wrong);
- absent and listed: skip (predicted; allowed under CI=true);
- absent and not listed: FAIL under CI=true, else skip.

Every kernel test also runs inside an fd-leak check: the process's open fds after the test
(after a garbage collection) may not outnumber those before it.
"""

from __future__ import annotations

import gc
import os

import pytest
from kernel_features import IN_CI, PREDICTED, require_feature


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
    for marker in item.iter_markers("needs"):
        require_feature(*marker.args)


@pytest.fixture(scope="session", autouse=True)
def _memlock_unlimited():
    """As sigscope itself does at start: before Linux 5.11 BPF maps and programs are charged
    to RLIMIT_MEMLOCK, whose default is too small for the tests' maps."""
    if os.geteuid() == 0:
        from sigscope.bpf.privileges import raise_memlock_limit

        raise_memlock_limit()
    yield


@pytest.fixture(autouse=True)
def _no_fd_leak(request):
    """Kernel tests: fail when the test left more fds open than it found (checked only when
    the test itself passed: a failure midway leaves its children's pipes to the collector)."""
    if request.node.get_closest_marker("kernel") is None:
        yield
        return
    gc.collect()
    before = set(os.listdir("/proc/self/fd"))
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.passed:
        return
    gc.collect()
    after = set(os.listdir("/proc/self/fd"))
    leaked = after - before
    if len(after) > len(before):
        targets = []
        for fd in sorted(leaked, key=int):
            try:
                targets.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                targets.append(fd)
        pytest.fail(f"fd leak: {len(after) - len(before)} more open fds after the test "
                    f"({', '.join(targets)})", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # for _no_fd_leak
    if IN_CI and report.skipped and item.get_closest_marker("kernel") is not None:
        if PREDICTED in str(report.longrepr):
            return  # the matrix table says this kernel lacks what the test needs
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped under CI=true: {report.longrepr}"


# How a signal syscall is learnt (programs/entry_regs.py): from the saved user registers at
# generate and exit ("registers", where the kernel has the features), or by sys_enter probes
# ("sys_enter", forced with ProbeSession.entry_probes). Kernel test modules that build Tracers
# run on both with ``pytestmark = pytest.mark.usefixtures("entry_path")``.
REGS_FEATURES = ("task_pt_regs", "get_current_task_btf", "bpf_atomics", "btf_vmlinux")


@pytest.fixture(scope="module", params=["registers", "sys_enter"])
def entry_path(request):
    from sigscope.session import ProbeSession

    if request.param == "registers":
        require_feature(*REGS_FEATURES)
        from sigscope.programs import entry_regs

        assert entry_regs.regs_layout() is not None, "features present, pt_regs layout not found"
    saved = ProbeSession.entry_probes
    ProbeSession.entry_probes = request.param == "sys_enter"
    yield request.param
    ProbeSession.entry_probes = saved
