"""The kernel-feature policy of the tests (see tests/conftest.py): which needed features a
kernel test may skip for. Importable by tests as ``from kernel_features import require_feature``.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXPECT_MISSING_ENV = "SIGSCOPE_EXPECT_MISSING"
PREDICTED = "predicted missing by " + EXPECT_MISSING_ENV


def expected_missing() -> frozenset[str]:
    """The features SIGSCOPE_EXPECT_MISSING lists (unknown names: ValueError)."""
    from sigscope.bpf.features import parse_feature_list

    return parse_feature_list(os.environ.get(EXPECT_MISSING_ENV, ""))


def feature_verdict(name: str, present: bool, listed: frozenset[str],
                    in_ci: bool) -> tuple[str, str] | None:
    """None (run the test), ("skip", reason) or ("fail", reason) for one needed feature."""
    kernel = os.environ.get("SIGSCOPE_KMATRIX_KERNEL", os.uname().release)
    if present:
        if name in listed:
            return ("fail", f"kernel {kernel} has feature {name!r}, but {EXPECT_MISSING_ENV} "
                            "lists it missing: the matrix table or the probe is wrong")
        return None
    if name in listed:
        return ("skip", f"kernel {kernel} lacks {name!r} ({PREDICTED})")
    reason = (f"kernel {kernel} lacks {name!r}, which {EXPECT_MISSING_ENV} does not predict")
    return ("fail", reason) if in_ci else ("skip", reason)


def require_feature(*names: str) -> None:
    """Inside a test: skip or fail (see the module docstring) unless every feature is there."""
    from sigscope.bpf import features

    listed = expected_missing()
    for name in names:
        verdict = feature_verdict(name, features.has(name), listed, IN_CI)
        if verdict is None:
            continue
        action, reason = verdict
        if action == "fail":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
