"""The running kernel's BTF: parse it, sanity-check task_struct, and prove the offsets with BPF.

The BPF test reads task_struct fields of one of our own threads at the offsets BTF gave us (via
bpf_get_current_task + bpf_probe_read_kernel) and compares them with what the process knows
about itself, so a wrong offset on this kernel fails here.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from sigscope.bpf import asm, btf
from sigscope.bpf.asm import R0, R1, R2, R3, R8, R9, R10
from sigscope.bpf.attach import attach_tracepoint
from sigscope.bpf.btf import Btf
from sigscope.bpf.maps import ArrayMap
from sigscope.bpf.program import Program

# Where the program stores what it read (one ArrayMap value).
OUT_TGID, OUT_PID, OUT_COMM, OUT_PARENT_TGID, OUT_EXIT_CODE, OUT_HITS = 0, 4, 8, 24, 28, 32
OUT_SIZE = 40
OUT_LAYOUT = "<II16sIIQ"


def test_parse_live_vmlinux_btf() -> None:
    started = time.perf_counter()
    fresh = Btf._load_file(btf.VMLINUX_BTF_PATH)  # uncached, to time a real parse
    elapsed = time.perf_counter() - started
    print(
        f"\nvmlinux BTF: {Path(btf.VMLINUX_BTF_PATH).stat().st_size} bytes, "
        f"{fresh.type_count} types, read+scan {elapsed * 1000:.1f} ms "
        f"(scan {fresh.parse_seconds * 1000:.1f} ms)"
    )
    assert fresh.type_count > 10_000
    assert btf.available()
    assert Btf.load() is Btf.load()  # cached per process


def test_task_struct_layout_is_sane() -> None:
    kbtf = Btf.load()
    task = kbtf.struct("task_struct")
    offsets = {
        name: kbtf.member_offset("task_struct", name)
        for name in ("pid", "tgid", "exit_code", "comm", "signal", "real_parent")
    }
    for name, offset in offsets.items():
        assert 0 <= offset < task.size, name
        assert offset + kbtf.member_size("task_struct", name) <= task.size, name
    assert offsets["tgid"] == offsets["pid"] + 4
    assert kbtf.member_size("task_struct", "pid") == 4
    assert kbtf.member_size("task_struct", "exit_code") == 4
    assert kbtf.member_size("task_struct", "comm") == 16
    assert kbtf.array_length(kbtf.member("task_struct", "comm").type_id) == 16
    assert kbtf.member_type_name("task_struct", "signal") == "signal_struct"
    assert kbtf.member_type_name("task_struct", "real_parent") == "task_struct"
    assert kbtf.field_path_offset("task_struct", "signal") == offsets["signal"]
    signal_struct = kbtf.struct("signal_struct")
    for name in ("group_exit_code", "flags"):
        assert 0 <= kbtf.member_offset("signal_struct", name) < signal_struct.size


def task_reader_program(out: ArrayMap, kbtf: Btf, tgid: int, tid: int) -> list:
    """For thread (tgid, tid) only: read its task_struct at BTF offsets into out[0]."""
    offset = {
        name: kbtf.member_offset("task_struct", name)
        for name in ("tgid", "pid", "comm", "exit_code", "real_parent")
    }

    def probe_read(dst_off: int, size: int, src_reg: int, src_off: int) -> list:
        return [
            asm.mov64_reg(R1, R9),
            asm.alu64_imm("ADD", R1, dst_off),
            asm.mov64_imm(R2, size),
            asm.mov64_reg(R3, src_reg),
            asm.alu64_imm("ADD", R3, src_off),
            asm.call("probe_read_kernel"),
        ]

    return [
        asm.call("get_current_pid_tgid"),
        asm.ld_imm64(R1, (tgid << 32) | tid),
        asm.jmp_reg("JNE", R0, R1, "out"),
        asm.st("W", R10, -4, 0),
        asm.ld_map_fd(R1, out.fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, -4),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, "out"),
        asm.mov64_reg(R9, R0),  # r9 = &out[0]
        asm.call("get_current_task"),
        asm.mov64_reg(R8, R0),  # r8 = current task_struct *
        probe_read(OUT_TGID, 4, R8, offset["tgid"]),
        probe_read(OUT_PID, 4, R8, offset["pid"]),
        probe_read(OUT_COMM, 16, R8, offset["comm"]),
        probe_read(OUT_EXIT_CODE, 4, R8, offset["exit_code"]),
        # real_parent is a pointer: read it onto the stack, then read the parent's tgid.
        asm.mov64_reg(R1, R10),
        asm.alu64_imm("ADD", R1, -16),
        asm.mov64_imm(R2, 8),
        asm.mov64_reg(R3, R8),
        asm.alu64_imm("ADD", R3, offset["real_parent"]),
        asm.call("probe_read_kernel"),
        asm.ldx("DW", R8, R10, -16),
        probe_read(OUT_PARENT_TGID, 4, R8, offset["tgid"]),
        asm.mov64_imm(R1, 1),
        asm.atomic_add("DW", R9, R1, OUT_HITS),
        asm.label("out"),
        asm.mov64_imm(R0, 0),
        asm.exit_(),
    ]


def test_bpf_reads_our_task_at_btf_offsets() -> None:
    kbtf = Btf.load()
    # A second thread, so that pid (thread id) and tgid (process id) differ and a swap shows.
    tid_known = threading.Event()
    go = threading.Event()
    done = threading.Event()
    seen: dict = {}

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        tid_known.set()
        if go.wait(timeout=30):
            seen["ppid"] = os.getppid()  # the syscall the program is attached to
        seen["comm"] = Path(f"/proc/self/task/{seen['tid']}/comm").read_bytes().rstrip(b"\n")
        done.set()

    thread = threading.Thread(target=worker, name="btf-probe")
    thread.start()
    try:
        assert tid_known.wait(timeout=30)
        tid = seen["tid"]
        assert tid != os.getpid()
        with ArrayMap(OUT_SIZE, 1, name="t_btf_task") as out:
            code = task_reader_program(out, kbtf, os.getpid(), tid)
            with Program.load(code, name="t_btf_task") as prog:
                with attach_tracepoint(prog, "syscalls", "sys_enter_getppid"):
                    go.set()
                    assert done.wait(timeout=30)
            raw = out.lookup(struct.pack("<I", 0))
    finally:
        go.set()
        thread.join()
    tgid, pid, comm, parent_tgid, exit_code, hits = struct.unpack(OUT_LAYOUT, raw)
    assert hits == 1
    assert tgid == os.getpid()
    assert pid == tid
    assert parent_tgid == seen["ppid"] == os.getppid()
    assert exit_code == 0
    # Up to the NUL: a kernel that renames without padding (5.10: strlcpy) leaves older bytes
    # after it in task->comm.
    assert comm.split(b"\0", 1)[0] == seen["comm"]


def test_quick_type_ids_equal_the_full_parsers() -> None:
    """btf_scan.vmlinux_type_id (start-up's attach_btf_id of the tp_btf program) against the
    full parser, on this kernel's BTF."""
    from sigscope.bpf import btf_scan

    full = Btf.load()
    for name in ("btf_trace_signal_generate", "btf_trace_sched_process_exit"):
        want = full.find_type(name, frozenset({btf.BTF_KIND_TYPEDEF}))
        assert want is not None
        assert btf_scan.vmlinux_type_id(name, btf_scan.BTF_KIND_TYPEDEF) == want
    assert btf_scan.vmlinux_type_id("no_such_type_anywhere", btf_scan.BTF_KIND_TYPEDEF) is None
