"""bpf/features.py without a kernel: the fixed names, their versions, parsing the matrix
runner's list, caching, the SIGSCOPE_NO_BTF switch; and the tests' feature policy."""

from __future__ import annotations

import re

import pytest
from kernel_features import PREDICTED, feature_verdict

from sigscope.bpf import btf_scan, features

# The names the kernel-matrix runner's table uses, with the release that brought each.
MATRIX_NAMES = {
    "ringbuf": "5.8", "tp_btf": "5.5", "btf_vmlinux": None, "map_batch": "5.6",
    "bpf_atomics": "5.12", "recursion_misses": "5.12", "get_current_task_btf": "5.11",
    "perf_event_link": "5.15", "task_pt_regs": "5.15", "sched_exit_group_dead": "6.16",
    "fentry": "5.5",
}


def test_matrix_names_and_versions() -> None:
    for name, since in MATRIX_NAMES.items():
        assert features.FEATURES[name].since == since, name
        assert features.FEATURES[name].name == name


def test_every_feature_is_described_and_versioned() -> None:
    for name, feature in features.FEATURES.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert feature.description and callable(feature.probe)
        assert feature.since is None or re.fullmatch(r"\d+\.\d+", feature.since)


def test_parse_feature_list() -> None:
    assert features.parse_feature_list("") == frozenset()
    assert features.parse_feature_list(" bpf_atomics, perf_event_link ,,") == {
        "bpf_atomics", "perf_event_link"}
    with pytest.raises(ValueError, match="unknown kernel feature name.*bpf_atomic\\b"):
        features.parse_feature_list("bpf_atomic")


def test_has_is_cached_and_table_follows_features(monkeypatch) -> None:
    calls = []
    fake = {name: features.Feature(name, f.since, f.description,
                                   lambda name=name: calls.append(name) or name == "ringbuf",
                                   f.needs_btf, f.essential)
            for name, f in features.FEATURES.items()}
    monkeypatch.setattr(features, "FEATURES", fake)
    monkeypatch.setattr(features, "raise_memlock_limit", lambda: True)
    monkeypatch.delenv(btf_scan.NO_BTF_ENV, raising=False)
    features.clear_cache()
    try:
        assert features.has("ringbuf") and features.has("ringbuf")
        assert calls == ["ringbuf"]
        table = features.table()
        assert [row[0] for row in table] == list(fake)
        assert dict((name, present) for name, _, present in table)["ringbuf"] is True
        with pytest.raises(KeyError):
            features.has("no_such_feature")
    finally:
        features.clear_cache()


def test_no_btf_switch_makes_btf_features_absent(monkeypatch) -> None:
    monkeypatch.setattr(features, "raise_memlock_limit", lambda: True)
    monkeypatch.setenv(btf_scan.NO_BTF_ENV, "1")
    features.clear_cache()
    try:
        assert btf_scan.vmlinux_btf_disabled()
        assert "SIGSCOPE_NO_BTF" in btf_scan.vmlinux_btf_missing_reason()
        for name, feature in features.FEATURES.items():
            if feature.needs_btf:
                assert features.has(name) is False, name  # never probed
        with pytest.raises(btf_scan.BtfScanError, match="SIGSCOPE_NO_BTF"):
            btf_scan.vmlinux_struct_members("task_struct")
    finally:
        features.clear_cache()
    for value, disabled in (("0", False), ("", False), ("yes", True)):
        monkeypatch.setenv(btf_scan.NO_BTF_ENV, value)
        assert btf_scan.vmlinux_btf_disabled() is disabled


def test_missing_essentials_names_what_is_missing(monkeypatch) -> None:
    present = {"bpf_tracepoint": True, "ringbuf": False, "perf_buffer": False}
    monkeypatch.setattr(features, "has", lambda name: present.get(name, True))
    [line] = features.missing_essentials()
    assert "ring buffer" in line and "perf event array" in line
    present["bpf_tracepoint"] = False
    with pytest.raises(features.KernelFeatureError, match=r"^this kernel lacks BPF programs on "
                       r"tracepoints .*bpf_tracepoint.*Linux 4\.7"):
        features.check_essentials()


@pytest.mark.parametrize("present,listed,in_ci,verdict", [
    (True, False, True, None),
    (True, True, False, "fail"),     # listed missing but there: the table or probe is wrong
    (False, True, True, "skip"),     # predicted: a skip even under CI
    (False, False, True, "fail"),    # not predicted: CI must not skip
    (False, False, False, "skip"),
])
def test_feature_verdicts(present, listed, in_ci, verdict) -> None:
    result = feature_verdict("bpf_atomics", present, frozenset({"bpf_atomics"} if listed
                                                               else ()), in_ci)
    assert (result and result[0]) == verdict
    if verdict == "skip" and listed:
        assert PREDICTED in result[1]
