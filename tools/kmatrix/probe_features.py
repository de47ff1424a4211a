#!/usr/bin/env python3
"""Measure which sigscope kernel features this kernel has (run as root, inside a guest).

Verification for the feature table of tools/kmatrix/kernels.json; stdlib + ctypes only, no
sigscope import (so it checks the kernel, not our code). Each probe does the smallest thing that
the feature needs: create the map, load the instruction or helper call, attach the program.
Prints one line per feature and, with --json FILE, writes {feature: true/false}.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import struct
import sys

SYSCALLS = {"x86_64": {"bpf": 321, "perf_event_open": 298},
            "aarch64": {"bpf": 280, "perf_event_open": 241}}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD = 0, 5, 15
BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_LOOKUP_BATCH, BPF_LINK_CREATE = 17, 24, 28
PROG_SOCKET_FILTER, PROG_KPROBE, PROG_TRACEPOINT, PROG_TRACING = 1, 2, 5, 26
BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY, BPF_PERF_EVENT = 23, 24, 41
TRACEFS = "/sys/kernel/tracing"
BTF = "/sys/kernel/btf/vmlinux"


def bpf(cmd: int, attr: bytes) -> tuple[int, int]:
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(SYSCALLS["bpf"], cmd, buf, len(attr))
    return ret, (ctypes.get_errno() if ret < 0 else 0)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


MOV0 = insn(0xB7, 0, imm=0)  # r0 = 0
EXIT = insn(0x95)


def call(helper: int) -> bytes:
    return insn(0x85, imm=helper)


def prog_load(prog_type: int, code: bytes, attach_type: int = 0, btf_id: int = 0,
              log: bool = False) -> tuple[int, int, str]:
    license_ = ctypes.create_string_buffer(b"GPL")
    insns = ctypes.create_string_buffer(code, len(code))
    logbuf = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1 if log else 0, len(logbuf) if log else 0,
                     ctypes.addressof(logbuf) if log else 0)
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    fd, err = bpf(BPF_PROG_LOAD, bytes(attr))
    return fd, err, logbuf.value.decode(errors="replace")


def map_create(map_type: int, key: int, value: int, entries: int) -> tuple[int, int]:
    return bpf(BPF_MAP_CREATE, struct.pack("<IIIII", map_type, key, value, entries, 0) + bytes(64))


def btf_ids(names: set[str]) -> dict[str, int]:
    """Type ids of the named BTF types (TYPEDEF, FUNC) in vmlinux."""
    data = open(BTF, "rb").read()
    _, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", data)
    types, strings = hdr_len + type_off, hdr_len + str_off
    extra = {1: lambda v: 4, 3: lambda v: 12, 4: lambda v: 12 * v, 5: lambda v: 12 * v,
             6: lambda v: 8 * v, 13: lambda v: 8 * v, 14: lambda v: 4, 15: lambda v: 12 * v,
             17: lambda v: 4, 19: lambda v: 12 * v}
    found, pos, type_id = {}, types, 1
    while pos < types + type_len:
        name_off, info, _ = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind in (8, 12) and name_off:
            end = data.index(b"\0", strings + name_off)
            name = data[strings + name_off:end].decode()
            if name in names:
                found[name] = type_id
        pos += 12 + extra.get(kind, lambda v: 0)(vlen)
        type_id += 1
    return found


def verifier_says(log: str) -> str:
    """The verifier's complaint: its last line that is not the statistics."""
    lines = [ln for ln in log.strip().splitlines() if not ln.startswith("processed ")]
    return lines[-1] if lines else ""


def close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def probe_ringbuf() -> tuple[bool, str]:
    fd, err = map_create(27, 0, 0, 1 << 16)
    close(fd)
    return fd >= 0, os.strerror(err) if err else ""


def probe_map_batch() -> tuple[bool, str]:
    fd, err = map_create(1, 4, 4, 4)
    if fd < 0:
        return False, f"hash map: {os.strerror(err)}"
    keys, values, out = (ctypes.create_string_buffer(16) for _ in range(3))
    attr = struct.pack("<QQQQIIQQ", 0, ctypes.addressof(out), ctypes.addressof(keys),
                       ctypes.addressof(values), 4, fd, 0, 0)
    ret, err = bpf(BPF_MAP_LOOKUP_BATCH, attr)
    close(fd)
    # An empty map answers ENOENT where batches exist; an unknown command is EINVAL.
    return ret >= 0 or err == 2, os.strerror(err) if err else ""


def probe_bpf_atomics() -> tuple[bool, str]:
    code = (insn(0xB7, 1, imm=0) + insn(0x7B, 10, 1, -8) + MOV0
            + insn(0xDB, 10, 1, -8, 0xF1) + MOV0 + EXIT)  # r0 = cmpxchg(r10-8, r0, r1)
    fd, err, log = prog_load(PROG_SOCKET_FILTER, code, log=True)
    close(fd)
    return fd >= 0, verifier_says(log) if fd < 0 else "loaded"


def probe_recursion_misses() -> tuple[bool, str]:
    fd, err, _ = prog_load(PROG_SOCKET_FILTER, MOV0 + EXIT)
    if fd < 0:
        return False, f"load: {os.strerror(err)}"
    info = ctypes.create_string_buffer(512)
    attr = bytearray(struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)))
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    ret = libc.syscall(SYSCALLS["bpf"], BPF_OBJ_GET_INFO_BY_FD, buf, len(attr))
    close(fd)
    info_len = struct.unpack_from("<I", buf.raw, 4)[0]
    # recursion_misses is the u64 at offset 208 of struct bpf_prog_info (after run_cnt).
    return ret == 0 and info_len >= 216, f"info_len {info_len}"


def probe_helper(chain: bytes, what: str) -> tuple[bool, str]:
    fd, err, log = prog_load(PROG_KPROBE, chain + MOV0 + EXIT, log=True)
    close(fd)
    return fd >= 0, (verifier_says(log) if fd < 0 else "loaded") + f" ({what})"


def probe_get_current_task_btf() -> tuple[bool, str]:
    return probe_helper(call(158), "helper 158")


def probe_task_pt_regs() -> tuple[bool, str]:
    return probe_helper(call(158) + insn(0xBF, 1, 0) + call(175), "helper 175")  # r1 = r0


def tracepoint_id(system: str, name: str) -> int:
    with open(f"{TRACEFS}/events/{system}/{name}/id") as f:
        return int(f.read())


def probe_perf_event_link() -> tuple[bool, str]:
    attr = struct.pack("<IIQ", 2, 112, tracepoint_id("sched", "sched_process_exit")) + bytes(96)
    abuf = ctypes.create_string_buffer(attr, len(attr))
    pfd = libc.syscall(SYSCALLS["perf_event_open"], abuf, -1, 0, -1, 8)  # PERF_FLAG_FD_CLOEXEC
    if pfd < 0:
        return False, f"perf_event_open: {os.strerror(ctypes.get_errno())}"
    fd, err, _ = prog_load(PROG_TRACEPOINT, MOV0 + EXIT)
    if fd < 0:
        close(pfd)
        return False, f"load: {os.strerror(err)}"
    link, err = bpf(BPF_LINK_CREATE, struct.pack("<IIII", fd, pfd, BPF_PERF_EVENT, 0) + bytes(32))
    for f in (link, fd, pfd):
        close(f)
    return link >= 0, os.strerror(err) if err else ""


def probe_btf_prog(attach_type: int, names: list[str]) -> tuple[bool, str]:
    if not os.path.exists(BTF):
        return False, "no vmlinux BTF"
    ids = btf_ids(set(names))
    name = next((n for n in names if n in ids), None)
    if name is None:
        return False, f"none of {names} in BTF"
    fd, err, log = prog_load(PROG_TRACING, MOV0 + EXIT, attach_type, ids[name], log=True)
    if fd < 0:
        return False, f"load {name}: {os.strerror(err)} {verifier_says(log)}"
    link, err = bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", 0, fd) + bytes(4))
    close(link)
    close(fd)
    return link >= 0, f"{name}: " + (os.strerror(err) if err else "attached")


def probe_tp_btf() -> tuple[bool, str]:
    return probe_btf_prog(BPF_TRACE_RAW_TP, ["btf_trace_signal_generate",
                                             "btf_trace_sched_process_exit"])


def probe_fentry() -> tuple[bool, str]:
    return probe_btf_prog(BPF_TRACE_FENTRY, ["do_send_sig_info", "__send_signal_locked",
                                             "__send_signal", "do_exit"])


def probe_btf_vmlinux() -> tuple[bool, str]:
    ok = os.path.exists(BTF)
    return ok, f"{os.path.getsize(BTF)} bytes" if ok else "absent"


def probe_sched_exit_group_dead() -> tuple[bool, str]:
    with open(f"{TRACEFS}/events/sched/sched_process_exit/format") as f:
        fields = [line.split(";")[0].split()[-1] for line in f if line.strip().startswith("field:")]
    return "group_dead" in fields, " ".join(fields[4:])


def probe_pidfd_thread() -> tuple[bool, str]:
    # pidfd_open is 434 on x86_64 and arm64; PIDFD_THREAD = O_EXCL (0o200).
    fd = libc.syscall(ctypes.c_long(434), ctypes.c_long(os.getpid()), ctypes.c_long(0o200))
    if fd < 0:
        return False, os.strerror(ctypes.get_errno())
    close(fd)
    return True, "thread pidfd"


PROBES = {
    "ringbuf": probe_ringbuf, "tp_btf": probe_tp_btf, "btf_vmlinux": probe_btf_vmlinux,
    "map_batch": probe_map_batch, "bpf_atomics": probe_bpf_atomics,
    "recursion_misses": probe_recursion_misses,
    "get_current_task_btf": probe_get_current_task_btf,
    "perf_event_link": probe_perf_event_link, "task_pt_regs": probe_task_pt_regs,
    "sched_exit_group_dead": probe_sched_exit_group_dead, "fentry": probe_fentry,
    "pidfd_thread": probe_pidfd_thread,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    # Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (sigscope lifts it the same way).
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    result = {}
    print(f"kernel {platform.release()} {platform.machine()}")
    for name, probe in PROBES.items():
        try:
            ok, detail = probe()
        except OSError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result[name] = ok
        print(f"{name:<22} {'present' if ok else 'MISSING'}  {detail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
