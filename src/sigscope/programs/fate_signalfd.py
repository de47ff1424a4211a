"""--fate: signals read from a signalfd are consumed, not left queued.

signalfd's read (fs/signalfd.c) dequeues signals without signal_deliver and copies one
``struct signalfd_siginfo`` (128 bytes, ``ssi_signo`` at offset 0: include/uapi/linux/
signalfd.h) per signal to the caller's buffer. Three small programs follow it:

* ``sys_exit_signalfd4``/``sys_exit_signalfd``: a returned fd is a signalfd of the calling
  process: (tgid << 32 | fd) goes into the ``sfds`` hash map.
* ``sys_enter_read``: every read(2) looks its (tgid, fd) up in ``sfds`` (one hash lookup: the
  whole cost on the common path) and stops there on a miss. On a hit the fd is checked to
  still be a signalfd (it may have been closed and reused): current->files->fdt->fd[fd]->f_op
  ->read_iter (or ->read on kernels before 6.x's read_iter) must be signalfd's, its address
  taken from /proc/kallsyms; else the entry is dropped. Then the buffer is parked in
  ``sfd_reads`` under the thread id.
* ``sys_exit_read``: when this thread parked a buffer (one lookup), each whole
  signalfd_siginfo the read returned (up to ``MAX_SIGINFOS``) becomes a KIND_CONSUMED record,
  its signal read from the user buffer.

Not followed: signalfds a process had before tracing began, or inherited across fork (their
reads are not in ``sfds``), and reads through readv(2) or io_uring.
"""

from __future__ import annotations

from typing import NamedTuple

from sigscope.bpf import asm, btf_scan
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, W
from sigscope.bpf.tracefs import EventFormat
from sigscope.bpf.uapi import BPF_ANY
from sigscope.model import record as rec
from sigscope.model.record import offset as _f
from sigscope.programs.common import (
    STACK_KEY,
    STACK_RECORD,
    Labels,
    read_kernel_value,
    update_elem,
)
from sigscope.programs.fate import record_header, thread_filter, write_record
from sigscope.programs.signal import ProbeConfig, epilogue, prologue, signal_filter

SIGINFO_SIZE = 128   # sizeof(struct signalfd_siginfo)
MAX_SIGINFOS = 8     # signals reported per read (a read may return more; rarely done)
MAX_SIGNALFDS = 4096
TRACEPOINTS = (
    ("fate_sfd4", "syscalls", "sys_exit_signalfd4"),
    ("fate_sfd", "syscalls", "sys_exit_signalfd"),
    ("fate_sfd_rd", "syscalls", "sys_enter_read"),
    ("fate_sfd_rx", "syscalls", "sys_exit_read"),
)
# Stack slots below the record and key (programs/common.py) for the map keys.
_KEY2 = STACK_KEY - 8


class SignalfdLayout(NamedTuple):
    task_files: int
    files_fdt: int
    fdt_max_fds: int
    fdt_fd: int
    file_f_op: int
    fop_member: int      # file_operations.read_iter, or .read
    signalfd_read: int   # the address that member holds for a signalfd


# The two hash maps the programs use, as (key size, value size, entries); the tracer makes them.
SFDS_MAP = (8, 4, MAX_SIGNALFDS)   # u64 tgid << 32 | fd -> u32 1
READS_MAP = (4, 8, 1024)           # u32 tid -> u64 user buffer (one read per thread at a time)


class SignalfdMaps(NamedTuple):
    """The fds of the SFDS_MAP and READS_MAP hash maps."""

    sfds: int
    reads: int


def _kallsyms_address(*names: str, path: str = "/proc/kallsyms") -> tuple[str, int] | None:
    wanted = {name.encode() for name in names}
    try:
        with open(path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in wanted and parts[1] in (b"t", b"T"):
                    address = int(parts[0], 16)
                    return (parts[2].decode(), address) if address else None
    except OSError:
        return None
    return None


def signalfd_layout() -> SignalfdLayout | None:
    """Offsets from the kernel's BTF and signalfd's read function from /proc/kallsyms; None
    when either cannot be had (then signalfd reads are not followed)."""
    found = _kallsyms_address("signalfd_read_iter", "signalfd_read")
    if found is None:
        return None
    function, address = found
    try:
        s = btf_scan.vmlinux_struct_members("task_struct", "files_struct", "fdtable", "file",
                                            "file_operations")
        member = "read_iter" if function == "signalfd_read_iter" else "read"
        return SignalfdLayout(s["task_struct"]["files"].offset, s["files_struct"]["fdt"].offset,
                              s["fdtable"]["max_fds"].offset, s["fdtable"]["fd"].offset,
                              s["file"]["f_op"].offset, s["file_operations"][member].offset,
                              address)
    except (btf_scan.BtfScanError, KeyError, OSError):
        return None


def _key_of_fd(fd_reg: int) -> list:
    """The u64 key tgid << 32 | fd at _KEY2, from r7 = pid_tgid. Uses r1."""
    return [
        asm.mov64_reg(R1, R7),
        asm.alu64_imm("RSH", R1, 32),
        asm.alu64_imm("LSH", R1, 32),
        asm.alu64_reg("OR", R1, fd_reg),
        asm.stx(DW, R10, R1, _KEY2),
    ]


def build_signalfd_exit(fds: SignalfdMaps, fmt: EventFormat) -> list:
    """sys_exit_signalfd4/signalfd: remember the returned fd as a signalfd."""
    out = "out"
    return [
        *prologue(),
        asm.ldx(DW, R8, R6, fmt.field("ret").offset),
        asm.jmp_imm("JSLT", R8, 0, out),
        *_key_of_fd(R8),
        asm.st(W, R10, STACK_KEY, 1),
        *update_elem(fds.sfds, _KEY2, STACK_KEY, BPF_ANY),
        *epilogue(out),
    ]


def build_read_enter(fds: SignalfdMaps, fmt: EventFormat, layout: SignalfdLayout) -> list:
    """sys_enter_read: a read of a known signalfd parks its buffer under the thread id."""
    out, stale = "out", "stale"
    prog = [
        *prologue(),
        asm.ldx(DW, R8, R6, fmt.field("fd").offset),
        asm.alu64_imm("LSH", R8, 32),  # the fd is an unsigned int
        asm.alu64_imm("RSH", R8, 32),
        *_key_of_fd(R8),
        asm.ld_map_fd(R1, fds.sfds),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, _KEY2),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, out),   # the common path ends here
        # Still a signalfd? current->files->fdt, fd < max_fds, fd[fd]->f_op->read(_iter).
        asm.call("get_current_task"),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.task_files, stale),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.files_fdt, stale),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.fdt_max_fds, stale, size=4),
        asm.jmp_reg("JGE", R8, R0, stale),
        *read_kernel_value(R9, layout.fdt_fd, stale),
        asm.mov64_reg(R9, R8),
        asm.alu64_imm("LSH", R9, 3),
        asm.alu64_reg("ADD", R9, R0),     # &fd[fd]
        *read_kernel_value(R9, 0, stale),
        asm.jmp_imm("JEQ", R0, 0, stale),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.file_f_op, stale),
        asm.jmp_imm("JEQ", R0, 0, stale),
        asm.mov64_reg(R9, R0),
        *read_kernel_value(R9, layout.fop_member, stale),
        *asm.ld_imm64(R1, layout.signalfd_read),
        asm.jmp_reg("JNE", R0, R1, stale),
        # Park the buffer.
        asm.stx(W, R10, R7, _KEY2),
        asm.ldx(DW, R1, R6, fmt.field("buf").offset),
        asm.stx(DW, R10, R1, STACK_KEY),
        asm.ld_map_fd(R1, fds.reads),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, _KEY2),
        asm.mov64_reg(R3, R10),
        asm.alu64_imm("ADD", R3, STACK_KEY),
        asm.mov64_imm(R4, 0),
        asm.call("map_update_elem"),
        asm.ja(out),
        asm.label(stale),  # closed and reused for something else: forget it
        *_key_of_fd(R8),
        asm.ld_map_fd(R1, fds.sfds),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, _KEY2),
        asm.call("map_delete_elem"),
        *epilogue(out),
    ]
    return prog


def build_read_exit(cfg: ProbeConfig, fds: SignalfdMaps, fmt: EventFormat) -> list:
    """sys_exit_read: the signals a signalfd read returned, one KIND_CONSUMED record each."""
    labels, out = Labels(), "out"
    prog = [
        *prologue(),
        asm.stx(W, R10, R7, _KEY2),
        asm.ld_map_fd(R1, fds.reads),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, _KEY2),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, out),   # the common path ends here
        asm.ldx(DW, R8, R0, 0),           # r8 = the user buffer
        asm.ld_map_fd(R1, fds.reads),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, _KEY2),
        asm.call("map_delete_elem"),
        asm.ldx(DW, R1, R6, fmt.field("ret").offset),
        asm.stx(DW, R10, R1, _KEY2),      # the byte count, kept on the stack
        *thread_filter(cfg, out, labels),
    ]
    for i in range(MAX_SIGINFOS):
        nxt = labels("siginfo")
        prog += [
            asm.ldx(DW, R1, R10, _KEY2),
            asm.jmp_imm("JSLT", R1, SIGINFO_SIZE * (i + 1), out),
            asm.st(DW, R10, STACK_KEY, 0),
            asm.mov64_reg(R1, R10),
            asm.alu64_imm("ADD", R1, STACK_KEY),
            asm.mov64_imm(R2, 4),
            asm.mov64_reg(R3, R8),
            asm.alu64_imm("ADD", R3, SIGINFO_SIZE * i),
            asm.call("probe_read_user"),
            asm.jmp_imm("JNE", R0, 0, out),
            asm.ldx(W, R9, R10, STACK_KEY),   # ssi_signo
            *signal_filter(R9, cfg.filters.signals, nxt, labels,
                            cfg.filters.excluded_signals),
            *record_header(rec.KIND_CONSUMED),
            asm.stx(W, R10, R9, STACK_RECORD + _f("sig")),
            *write_record(cfg, labels),
            asm.label(nxt),
        ]
    return prog + epilogue(out)
