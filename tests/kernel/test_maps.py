"""Real BPF maps: create each kind, and exercise element, iteration and batch operations."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from sigscope.bpf import arch, features, maps, uapi
from sigscope.bpf.maps import (
    ArrayMap,
    HashMap,
    PerCPUArrayMap,
    PerCPUHashMap,
    PerfEventArrayMap,
    RingBufMap,
    StackTraceMap,
)
from sigscope.bpf.syscall import BPFError


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_hash_map_element_operations() -> None:
    with HashMap(4, 8, 64, name="t_hash") as hmap:
        assert hmap.lookup(u32(1)) is None
        hmap.update(u32(1), u64(10))
        hmap.update(u32(2), u64(20))
        assert hmap.lookup(u32(1)) == u64(10)
        with pytest.raises(BPFError) as caught:
            hmap.update(u32(1), u64(11), flags=uapi.BPF_NOEXIST)
        assert caught.value.errno == errno.EEXIST
        assert str(caught.value).startswith("BPF_MAP_UPDATE_ELEM: File exists")
        hmap.update(u32(1), u64(11), flags=uapi.BPF_EXIST)
        assert sorted(hmap.keys()) == [u32(1), u32(2)]
        assert sorted(hmap.items()) == [(u32(1), u64(11)), (u32(2), u64(20))]
        assert hmap.delete(u32(2)) is True
        assert hmap.delete(u32(2)) is False
        assert hmap.info().name == b"t_hash"
        hmap.clear()
        assert list(hmap.keys()) == []
    assert hmap.closed


@pytest.mark.needs("map_batch")
def test_hash_map_lookup_batch_matches_iteration(monkeypatch) -> None:
    with HashMap(4, 8, 600, name="t_batch") as hmap:
        expected = {u32(k): u64(k * 3) for k in range(500)}
        for key, value in expected.items():
            hmap.update(key, value)
        # Small batches force several calls and the ENOENT-at-the-end handling.
        batched = hmap.lookup_batch(batch_size=7)
        assert len(batched) == 500
        assert dict(batched) == expected
        # A kernel without the command refuses it: the same pairs come by iteration.
        def refuse(self, batch_size):
            raise BPFError(errno.EINVAL, "BPF_MAP_LOOKUP_BATCH")

        monkeypatch.setattr(maps.Map, "_lookup_batch", refuse)
        assert dict(hmap.lookup_batch()) == expected


def test_lookup_batch_on_empty_map() -> None:
    with HashMap(8, 8, 4) as hmap:
        assert hmap.lookup_batch() == []


def test_array_map() -> None:
    with ArrayMap(8, 4, name="t_array") as amap:
        assert amap.lookup(u32(3)) == bytes(8)  # array entries always exist
        assert amap.lookup(u32(4)) is None
        amap.update(u32(2), u64(7))
        assert list(amap.keys()) == [u32(i) for i in range(4)]
        assert dict(amap.lookup_batch(batch_size=3))[u32(2)] == u64(7)
        amap.clear()
        assert amap.lookup(u32(2)) == bytes(8)


def test_percpu_hash_map_values_per_cpu() -> None:
    cpus = maps.possible_cpus()
    assert cpus == len(arch.possible_cpu_ids()) >= 1
    with PerCPUHashMap(4, 4, 16, name="t_pcpu_hash") as pmap:  # 4-byte values: 8-byte stride
        values = [u32(100 + cpu) for cpu in range(cpus)]
        pmap.update(u32(9), values)
        assert pmap.lookup(u32(9)) == values
        pmap.update(u32(10), u32(5))  # one value for every CPU
        assert pmap.lookup(u32(10)) == [u32(5)] * cpus
        assert dict(pmap.lookup_batch(batch_size=1)) == {u32(9): values, u32(10): [u32(5)] * cpus}
        assert dict(pmap.items()) == {u32(9): values, u32(10): [u32(5)] * cpus}
        with pytest.raises(BPFError, match="per-CPU values"):
            pmap.update(u32(11), [u32(1)] * (cpus + 1))
        pmap.clear()
        assert list(pmap.keys()) == []


def test_percpu_array_map_sum() -> None:
    cpus = maps.possible_cpus()
    with PerCPUArrayMap(8, 2, name="t_pcpu_array") as pmap:
        pmap.update(u32(1), [u64(cpu + 1) for cpu in range(cpus)])
        assert pmap.sum_u64(u32(1)) == cpus * (cpus + 1) // 2
        assert pmap.lookup(u32(0)) == [bytes(8)] * cpus
        assert len(pmap.lookup_batch()) == 2
        pmap.clear()
        assert pmap.sum_u64(u32(1)) == 0


def test_special_map_kinds() -> None:
    with RingBufMap(4096 * 4, name="t_ring") as ring:
        assert ring.size_bytes == 16384
        assert ring.info().type == uapi.BPF_MAP_TYPE_RINGBUF
    with pytest.raises(ValueError, match="power of two"):
        RingBufMap(5000)
    with PerfEventArrayMap(name="t_perf") as perf:
        assert perf.max_entries == max(arch.possible_cpu_ids()) + 1
        assert perf.info().type == uapi.BPF_MAP_TYPE_PERF_EVENT_ARRAY
    with StackTraceMap(32, max_depth=20, name="t_stack") as stacks:
        assert stacks.value_size == 160
        assert stacks.lookup(u32(0)) is None
        assert stacks.lookup_batch() == []  # falls back or batches: no stacks either way


def test_bad_key_size_is_a_clear_bpf_error() -> None:
    with HashMap(4, 8, 4, name="t_badkey") as hmap:
        with pytest.raises(BPFError) as caught:
            hmap.lookup(b"abc")
        assert caught.value.errno == errno.EINVAL
        assert str(caught.value) == (
            "BPF_MAP_LOOKUP_ELEM: Invalid argument (map t_badkey: key is 3 bytes, expected 4)"
        )
        with pytest.raises(BPFError, match="value is 4 bytes, expected 8"):
            hmap.update(u32(1), u32(1))


def test_kernel_refusal_names_the_command() -> None:
    with pytest.raises(BPFError) as caught:
        HashMap(0, 8, 4, name="t_zero_key")
    assert caught.value.errno == errno.EINVAL
    assert str(caught.value).startswith("BPF_MAP_CREATE: Invalid argument (map t_zero_key")


def test_map_names_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid map name"):
        HashMap(4, 4, 1, name="has-dash")
    with pytest.raises(ValueError, match="at most 15"):
        HashMap(4, 4, 1, name="x" * 16)


def test_closing_releases_the_fd_and_probes_leave_nothing_open() -> None:
    before = open_fds()
    hmap = HashMap(4, 4, 1)
    fd = hmap.fd
    assert str(fd) in open_fds()
    hmap.close()
    hmap.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        hmap.fd  # noqa: B018
    features.clear_cache()
    found = features.table()  # every probe, run afresh: each closes what it made
    assert [name for name, _since, _present in found] == list(features.FEATURES)
    assert open_fds() == before


def test_map_fds_are_close_on_exec() -> None:
    import fcntl

    with HashMap(4, 4, 1) as hmap:
        assert fcntl.fcntl(hmap.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
