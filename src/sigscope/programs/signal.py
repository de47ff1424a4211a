"""The signal-tracing BPF programs, assembled from the record layout and tracefs offsets.

Three kinds of program share one body of logic, like a libbpf tool's thin per-syscall wrappers:

* ``sys_enter_<call>`` (one per signal syscall): applies the sender filters, then parks a record
  in the thread's slot of the ``inflight`` array: who is sending, which signal, the arguments.
* ``signal:signal_generate``: the kernel has made a signal for a recipient. If the current thread
  is inside a signal syscall for the same signal, the recipient belongs to that call: the first
  is stored in the parked record, further ones (kill(-pgid), kill(-1)) are written out at once as
  FANOUT records. Otherwise the kernel generated the signal itself: a KERNEL record is written.
* ``sys_exit_<call>``: adds the return value to the parked record and writes it out as CALL.

So each send attempt and recipient is exactly one record, and a signal is never reported twice.

Filters are load-time constants compiled into the instructions. Finished records go to the
configured output (programs/common.py ``Output``: a ring buffer, a perf event array, or `top`'s
count map); writes that fail (buffer full) are counted per CPU in the ``counters`` map: lost,
never hidden.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

from sigscope.bpf import asm, btf_scan, features
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, W
from sigscope.bpf.tracefs import EventFormat, event_format
from sigscope.bpf.uapi import BPF_ANY
from sigscope.model import record as rec
from sigscope.model.filters import Filters
from sigscope.model.record import offset as _f
from sigscope.programs import context, entry_regs
from sigscope.programs.common import (
    COUNTER_INFLIGHT_FULL,
    STACK_KEY,
    STACK_RECORD,
    STACK_TIMED,
    Labels,
    Output,
    ProgramPlan,
    Role,
    bump_counter,
    read_kernel_value,
)
from sigscope.programs.origin import kernel_sigkill_stack
from sigscope.programs.task import (
    TaskLayout,
    comm_cut_at_nul,
    task_prologue,
    task_sender_to_stack,
)

# The in-flight calls, claimed one of two ways (inflight_claim() picks by the `bpf_atomics`
# feature; both give the same records):
#
# CLAIM_CMPXCHG, an array of slots, each a record followed by a u32 owner word (the
# owning thread's id, with INFLIGHT_BUSY set while its call is in flight). A thread claims a
# slot with an atomic compare-and-exchange on the owner word, at entry: first the slot at
# tid % INFLIGHT_SLOTS (normally still its own from its last call), else the first one of the
# next INFLIGHT_PROBES that is not busy. Only the owner touches a busy slot, so preemption and
# migration inside the call do not matter. generate and exit find the slot among the same
# INFLIGHT_PROBES by its owner word. Array lookups are inlined by the verifier: this replaces
# a hash lookup (a helper call; bench/README.md) in each of the three programs. When every probed
# slot is busy the call is counted in COUNTER_INFLIGHT_FULL, as a full map was before.
#
# CLAIM_TID_HASH, for kernels without BPF atomics (before 5.12): a hash map keyed by the thread
# id, value one record. Entry builds the record on the stack and stores it under its own tid
# (only the owning thread ever writes its key, so no claim needs an atomic; the map's bucket
# lock orders inserts of different threads); generate and exit look it up by tid; exit deletes
# it. A full map (update fails) is counted in COUNTER_INFLIGHT_FULL. Costs three hash
# operations per call instead of inlined array lookups (see README, "Supported kernels").
CLAIM_CMPXCHG = "cmpxchg"
CLAIM_TID_HASH = "tid_hash"
CLAIMS = (CLAIM_CMPXCHG, CLAIM_TID_HASH)
INFLIGHT_SLOTS = 1024        # user space scans them all (fate horizon; cost: bench/README.md)
INFLIGHT_PROBES = 4
INFLIGHT_BUSY = 1 << 30      # above any thread id (PID_MAX_LIMIT is 1 << 22)
_OWNER = rec.RECORD_SIZE                # offset of the owner word in a slot
INFLIGHT_VALUE_SIZE = rec.RECORD_SIZE + 8


def inflight_claim() -> str:
    """The claim this kernel supports: CLAIM_CMPXCHG with BPF atomics, else CLAIM_TID_HASH."""
    return CLAIM_CMPXCHG if features.has("bpf_atomics") else CLAIM_TID_HASH


# The in-flight map each claim expects (the session makes it: session.make_inflight_map).
# CLAIM_CMPXCHG: an array (key: u32 slot index; value: a record, then the owner word).
# CLAIM_TID_HASH: a hash map (key: u32 thread id; value: a record). Either way a value starts
# with the record, so user space reads both alike.

# signal_generate's own fields (names as in its tracefs format file).
GENERATE_FIELDS = ("sig", "errno", "code", "comm", "pid", "group", "result")

# Per-syscall argument fields in sys_enter_<call>: record field -> tracefs field.
SYSCALL_ARGS: dict[str, dict[str, str]] = {
    "kill": {"arg_pid": "pid"},
    "tkill": {"arg_pid": "pid"},
    "tgkill": {"arg_pid": "tgid", "arg_tid": "pid"},
    "rt_sigqueueinfo": {"arg_pid": "pid"},
    "rt_tgsigqueueinfo": {"arg_pid": "tgid", "arg_tid": "pid"},
    "pidfd_send_signal": {"arg_pidfd": "pidfd"},
}


class MapFds(NamedTuple):
    """The fds of the maps the programs use besides their output (made by the session)."""

    inflight: int
    counters: int     # per-CPU array of NUM_COUNTERS u64 (programs/common.py COUNTER_*)
    stacks: int = -1  # kernel stacks of kernel SIGKILLs (programs/origin.py); -1: none taken


class ProbeConfig(NamedTuple):
    filters: Filters
    # Where finished records go: common.RingbufOutput or PerfOutput for `trace`,
    # count.CountOutput for `top` (which so shares every line of this module's logic).
    output: Output
    maps: MapFds
    # How a call claims its in-flight record: CLAIM_CMPXCHG or CLAIM_TID_HASH (the caller
    # decides, by inflight_claim(): the builders probe nothing). Must match the map
    # (session.make_inflight_map with the same claim).
    claim: str
    # Where the kernel allows it (task.task_layout(), decided by the caller), the sender's ids,
    # comm and uid are read straight from its task_struct at these offsets instead of through
    # helper calls; None: the helpers (the records are the same either way).
    task: TaskLayout | None = None
    # Read the recipient from its task_struct in a BTF-typed raw tracepoint (tp_btf) where
    # the kernel has one; False forces the tracefs signal_generate (tests of the fallback).
    recipient_task: bool = True
    # True: always the sys_enter_<call> probes (three per signal), even where the kernel lets
    # generate and exit read the call from the saved user registers (programs/entry_regs.py).
    entry_probes: bool = False


# --- small shared pieces ----------------------------------------------------------------

def _load_s32(dst: int, src: int, off: int, size: int) -> list:
    """Load a 32-bit signed value held in a field of `size` bytes (syscall args are 8-byte slots),
    sign-extended to 64 bits (kill(-1) must compare as -1, whatever the upper half held)."""
    return [
        asm.ldx(W if size == 4 else DW, dst, src, off),
        asm.alu64_imm("LSH", dst, 32),
        asm.alu64_imm("ARSH", dst, 32),
    ]


def zero_stack_record() -> list:
    """Zero the RECORD_SIZE bytes of the stack record (every byte of a record written out
    must be initialised)."""
    return [asm.st(DW, R10, STACK_RECORD + i, 0) for i in range(0, rec.RECORD_SIZE, 8)]


def _ids_filter(reg: int, ids: frozenset[int], fail: str, labels: Labels) -> list:
    """Fall through when reg (32-bit) is one of ids, else jump to fail."""
    if not ids:
        return []
    ok = labels("id_ok")
    out = [asm.jmp32_imm("JEQ", reg, i, ok) for i in sorted(ids)]
    return [*out, asm.ja(fail), asm.label(ok)]


def signal_filter(
    sig_reg: int, signals: frozenset[int] | None, fail: str, labels: Labels,
    excluded: frozenset[int] = frozenset(),
) -> list:
    """Fall through when the signal in sig_reg is wanted: one of `signals`, or (signals None)
    any value not in `excluded`, numbers outside 0..64 included. Uses r1 and r2."""
    if signals is None:
        return _excluded_signal_filter(sig_reg, excluded, fail, labels)
    ok = labels("sig_ok")
    mask = sum(1 << s for s in signals if 0 <= s < 64)
    out: list = []
    if 64 in signals:
        out.append(asm.jmp_imm("JEQ", sig_reg, 64, ok))
    out += [
        asm.jmp_imm("JGT", sig_reg, 63, fail),  # also catches negative values (unsigned compare)
        *asm.ld_imm64(R1, mask),
        asm.mov64_reg(R2, sig_reg),
        asm.alu64_reg("RSH", R1, R2),
        asm.alu64_imm("AND", R1, 1),
        asm.jmp_imm("JEQ", R1, 0, fail),
        asm.label(ok),
    ]
    return out


def _excluded_signal_filter(
    sig_reg: int, excluded: frozenset[int], fail: str, labels: Labels
) -> list:
    """Jump to fail when the signal in sig_reg is one of `excluded`; every other value falls
    through (65 and -1 too: an exclusion hides nothing else). Uses r1 and r2."""
    if not excluded:
        return []
    ok = labels("sig_not_excluded")
    mask = sum(1 << s for s in excluded if 0 <= s < 64)
    out: list = []
    if 64 in excluded:
        out.append(asm.jmp_imm("JEQ", sig_reg, 64, fail))
    out += [
        asm.jmp_imm("JGT", sig_reg, 63, ok),  # unsigned: 64 and above, and negative values
        *asm.ld_imm64(R1, mask),
        asm.mov64_reg(R2, sig_reg),
        asm.alu64_reg("RSH", R1, R2),
        asm.alu64_imm("AND", R1, 1),
        asm.jmp_imm("JNE", R1, 0, fail),
        asm.label(ok),
    ]
    return out


def _comm_filter(comm_off_reg: int, comm_off: int, comm: bytes | None, fail: str) -> list:
    """Fall through when the 16 bytes at comm_off_reg+comm_off equal comm. Uses r1 and r2."""
    if comm is None:
        return []
    lo = int.from_bytes(comm[:8], "little")
    hi = int.from_bytes(comm[8:16], "little")
    return [
        asm.ldx(DW, R1, comm_off_reg, comm_off),
        *asm.ld_imm64(R2, lo),
        asm.jmp_reg("JNE", R1, R2, fail),
        asm.ldx(DW, R1, comm_off_reg, comm_off + 8),
        *asm.ld_imm64(R2, hi),
        asm.jmp_reg("JNE", R1, R2, fail),
    ]


def _sender_filters(cfg: ProbeConfig, fail: str, labels: Labels) -> list:
    """Sender pid filter on r7 (pid_tgid). Uses r1."""
    if not cfg.filters.sender_pids:
        return []
    return [
        asm.mov64_reg(R1, R7),
        asm.alu64_imm("RSH", R1, 32),
        *_ids_filter(R1, cfg.filters.sender_pids, fail, labels),
    ]


def current_comm_into_stack() -> list:
    """bpf_get_current_comm into the stack record's sender_comm, cleared first: the helper
    copies with strscpy on some kernels (6.1 among them), which stops at the NUL and leaves
    the bytes after it as they were. Clobbers r0-r5."""
    at = STACK_RECORD + _f("sender_comm")
    return [
        asm.st(DW, R10, at, 0),
        asm.st(DW, R10, at + 8, 0),
        asm.mov64_reg(R1, R10),
        asm.alu64_imm("ADD", R1, STACK_RECORD + _f("sender_comm")),
        asm.mov64_imm(R2, 16),
        asm.call("get_current_comm"),
    ]


def fill_sender_into_stack() -> list:
    """Sender ids and uid into the stack record, from r7 = pid_tgid. Clobbers r0-r5."""
    return [
        asm.stx(W, R10, R7, STACK_RECORD + _f("sender_tid")),
        asm.mov64_reg(R1, R7),
        asm.alu64_imm("RSH", R1, 32),
        asm.stx(W, R10, R1, STACK_RECORD + _f("sender_tgid")),
        asm.call("get_current_uid_gid"),
        asm.stx(W, R10, R0, STACK_RECORD + _f("sender_uid")),
    ]


# --- the recipient: the tracefs tracepoint, or the task itself (tp_btf) ----------------------

# The "system" of a plan target that is the BTF-typed raw tracepoint of `event`, attached with
# BPF_RAW_TRACEPOINT_OPEN (session.py), not a perf-event tracepoint.
TP_BTF = "tp_btf"
# Argument slots of the raw signal_generate tracepoint, each a u64 (include/trace/events/
# signal.h TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task,
# int group, int result), unchanged from 4.x to 6.x).
_ARG_SIG, _ARG_INFO, _ARG_TASK, _ARG_GROUP, _ARG_RESULT = (8 * i for i in range(5))
# include/uapi/asm-generic/siginfo.h: si_code; include/linux/sched/signal.h: the two special
# info "pointers" (SEND_SIG_NOINFO = 0, SEND_SIG_PRIV = 1) that the tracepoint itself turns
# into SI_USER and SI_KERNEL (TP_STORE_SIGINFO).
SI_USER = 0
SI_KERNEL = 0x80
SEND_SIG_PRIV = 1
# struct kernel_siginfo starts with the UAPI's int si_signo, si_errno, si_code (in that order
# on every architecture sigscope supports; MIPS swaps errno and code).
_SIGINFO_ERRNO = 4


class Recipient(NamedTuple):
    """Where the generate program reads the recipient from: `gen`, the tracefs format of
    signal:signal_generate (perf-event path), or `task`, offsets in task_struct (tp_btf path:
    ctx is the raw arguments; the task pointer is BTF-typed, so its ids are direct loads)."""

    gen: EventFormat | None
    task: RecipientLayout | None

    @property
    def tp_btf(self) -> bool:
        return self.task is not None


class RecipientLayout(NamedTuple):
    """Byte offsets the tp_btf program reads the recipient at: task_struct pid, tgid, comm;
    and the chain to its cgroup v2 id, task->cgroups (struct css_set *) ->dfl_cgrp (struct
    cgroup *) ->kn (struct kernfs_node *) ->id (u64 since 5.5), or None when the BTF lacks
    one of them (the id is then 0, unknown)."""

    pid: int
    tgid: int
    comm: int
    cgroup_chain: tuple[int, int, int, int] | None


@functools.cache
def recipient_layout() -> RecipientLayout | None:
    """The offsets, from a targeted BTF scan (btf_scan); None without BTF. (Not
    task_layout(): that one also needs bpf_get_current_task_btf, 5.11, which reading the
    recipient does not.)"""
    try:
        found = btf_scan.vmlinux_struct_members("task_struct", "css_set", "cgroup",
                                                "kernfs_node")
    except (btf_scan.BtfScanError, OSError):
        return None
    task = found["task_struct"]
    try:
        if task["pid"].span < 4 or task["tgid"].span < 4 or task["comm"].span < 16:
            return None
        ids = (task["pid"].offset, task["tgid"].offset, task["comm"].offset)
    except KeyError:
        return None
    chain: tuple[int, int, int, int] | None
    try:
        links = (task["cgroups"], found["css_set"]["dfl_cgrp"], found["cgroup"]["kn"],
                 found["kernfs_node"]["id"])
        chain = None
        if all(m.span >= 8 for m in links):
            chain = (links[0].offset, links[1].offset, links[2].offset, links[3].offset)
    except KeyError:
        chain = None
    return RecipientLayout(*ids, chain)


def recipient_source_is_task() -> bool:
    """Whether this kernel runs the tp_btf signal_generate (features `btf_vmlinux` and
    `tp_btf`, and task_struct's pid/tgid/comm found in its BTF)."""
    return (features.has("btf_vmlinux") and features.has("tp_btf")
            and recipient_layout() is not None)


def recipient_source(cfg: ProbeConfig) -> Recipient:
    """The tp_btf path where recipient_source_is_task() and cfg.recipient_task allows it;
    else the tracefs format of signal:signal_generate."""
    if cfg.recipient_task and recipient_source_is_task():
        layout = recipient_layout()
        assert layout is not None
        return Recipient(None, layout)
    return Recipient(event_format("signal", "signal_generate"), None)


def generate_path(cfg: ProbeConfig) -> str:
    """Which signal_generate program runs, for selftest: 'tp_btf' or 'tracepoint'."""
    return "tp_btf" if recipient_source(cfg).tp_btf else "tracepoint"


def _gen_sig(src: Recipient, dst: int) -> list:
    """dst = the generated signal (32 bits, zero-extended). Expects r6 = ctx."""
    if src.gen is None:
        return [asm.ldx(DW, dst, R6, _ARG_SIG), asm.mov32_reg(dst, dst)]
    return [asm.ldx(W, dst, R6, src.gen.field("sig").offset)]


def _gen_ids(src: Recipient, tid: int, tgid: int | None) -> list:
    """tid = the recipient's thread id; tgid (tp_btf only) its thread-group id. r6 = ctx."""
    if src.task is None:
        assert src.gen is not None
        return [asm.ldx(W, tid, R6, src.gen.field("pid").offset)]
    out = [asm.ldx(DW, R3, R6, _ARG_TASK), asm.ldx(W, tid, R3, src.task.pid)]
    if tgid is not None:
        out.append(asm.ldx(W, tgid, R3, src.task.tgid))
    return out


def _copy_generate_fields(dst: int, dst_base: int, src: Recipient,
                          labels: Labels) -> list:
    """Copy signal_generate's recipient fields to dst+dst_base+record offsets. Expects r6 =
    ctx; dst must survive helper calls. Clobbers r0-r5."""
    if src.task is not None:
        return _copy_task_fields(dst, dst_base, src.task, labels)
    gen = src.gen
    assert gen is not None
    out: list = [asm.st(W, dst, dst_base + _f("target_src"), rec.TARGET_SRC_TRACEFS),
                 asm.st(W, dst, dst_base + _f("target_tgid"), 0),
                 asm.st(DW, dst, dst_base + _f("target_cgroup"), 0)]
    for src_name, dst_name in (("code", "gen_code"), ("errno", "gen_errno"), ("pid", "target_tid"),
                               ("group", "gen_group"), ("result", "gen_result")):
        fld = gen.field(src_name)
        out += [asm.ldx(W, R1, R6, fld.offset), asm.stx(W, dst, R1, dst_base + _f(dst_name))]
    # The comm is read in 4-byte words (tracepoint context reads must be aligned) and cut at
    # its NUL (comm_cut_at_nul: the tracepoint copies all 16 bytes of the task's).
    comm = gen.field("comm")
    for reg, half in ((R1, 0), (R2, 8)):
        out += [asm.ldx(W, reg, R6, comm.offset + half),
                asm.ldx(W, R3, R6, comm.offset + half + 4),
                asm.alu64_imm("LSH", R3, 32),
                asm.alu64_reg("OR", reg, R3)]
    out += comm_cut_at_nul(labels)
    out += [asm.stx(DW, dst, R1, dst_base + _f("target_comm")),
            asm.stx(DW, dst, R2, dst_base + _f("target_comm") + 8)]
    return out


def _copy_task_fields(dst: int, base: int, task: RecipientLayout, labels: Labels) -> list:
    """tp_btf: the recipient's tid, tgid and comm (direct BTF-typed loads from its
    task_struct: cheaper than helper calls, 33 ns per signal less than bpf_probe_read_kernel
    of the comm, bench/recipient_cost.py), si_code/si_errno from the kernel_siginfo as the
    tracepoint itself derives them (bpf_probe_read_kernel: after comparing the pointer with
    SEND_SIG_PRIV the verifier no longer takes it as BTF-typed), and the cgroup id. Clobbers
    r0-r5."""
    info_done = labels("info_done")
    comm_at = base + _f("target_comm")
    return [
        asm.st(W, dst, base + _f("target_src"), rec.TARGET_SRC_TASK),
        asm.ldx(DW, R1, R6, _ARG_GROUP), asm.stx(W, dst, R1, base + _f("gen_group")),
        asm.ldx(DW, R1, R6, _ARG_RESULT), asm.stx(W, dst, R1, base + _f("gen_result")),
        asm.ldx(DW, R3, R6, _ARG_TASK),
        asm.ldx(W, R1, R3, task.pid), asm.stx(W, dst, R1, base + _f("target_tid")),
        asm.ldx(W, R1, R3, task.tgid), asm.stx(W, dst, R1, base + _f("target_tgid")),
        # comm: two 8-byte BTF-typed loads inside task->comm (char[16]; array members are
        # readable since 5.9's btf_struct_access array support), cut at the NUL.
        asm.ldx(DW, R1, R3, task.comm), asm.ldx(DW, R2, R3, task.comm + 8),
        *comm_cut_at_nul(labels),
        asm.stx(DW, dst, R1, comm_at), asm.stx(DW, dst, R2, comm_at + 8),
        # si_code and si_errno, as TP_STORE_SIGINFO makes them.
        asm.st(W, dst, base + _f("gen_errno"), 0),
        asm.st(W, dst, base + _f("gen_code"), SI_USER),
        asm.ldx(DW, R3, R6, _ARG_INFO),
        asm.jmp_imm("JEQ", R3, 0, info_done),
        asm.st(W, dst, base + _f("gen_code"), SI_KERNEL),
        asm.jmp_imm("JEQ", R3, SEND_SIG_PRIV, info_done),
        *read_kernel_value(R3, _SIGINFO_ERRNO, info_done, size=8),
        asm.stx(W, dst, R0, base + _f("gen_errno")),
        asm.alu64_imm("RSH", R0, 32),
        asm.stx(W, dst, R0, base + _f("gen_code")),
        asm.label(info_done),
        *_cgroup_id(dst, base, task, labels),
        *context.target_ns_ids(dst, base, labels),
    ]


def _cgroup_id(dst: int, base: int, task: RecipientLayout, labels: Labels) -> list:
    """target_cgroup = task->cgroups->dfl_cgrp->kn->id, by direct BTF-typed loads (each
    pointer checked for NULL; a faulting load reads 0), or 0 without the chain. Uses r1."""
    at = base + _f("target_cgroup")
    if task.cgroup_chain is None:
        return [asm.st(DW, dst, at, 0)]
    done = labels("cgroup_done")
    cgroups, dfl_cgrp, kn, kn_id = task.cgroup_chain
    out = [asm.st(DW, dst, at, 0), asm.ldx(DW, R1, R6, _ARG_TASK)]
    for off in (cgroups, dfl_cgrp, kn):
        out += [asm.ldx(DW, R1, R1, off), asm.jmp_imm("JEQ", R1, 0, done)]
    return [*out, asm.ldx(DW, R1, R1, kn_id), asm.stx(DW, dst, R1, at), asm.label(done)]


def _recipient_in(src: Recipient, ids: frozenset[int], fail: str, labels: Labels) -> list:
    """tp_btf: fall through when the recipient's tid or tgid is one of ids, else jump to fail.
    Uses r1-r3. (Tracefs path: callers check the tid, then what else they know.)"""
    not_tid, ok = labels("target_not_tid"), labels("target_ok")
    return [*_gen_ids(src, R1, R2),
            *_ids_filter(R1, ids, not_tid, labels),
            asm.ja(ok),
            asm.label(not_tid),
            *_ids_filter(R2, ids, fail, labels),
            asm.label(ok)]


def _target_filter(cfg: ProbeConfig, src: Recipient, fail: str, labels: Labels) -> list:
    """Fall through when the recipient is one of -T. tp_btf: its tid or tgid is in the set.
    Tracefs: its pid (a thread id) is, or the recipient is the current thread (a fault, a
    broken pipe) and its process is. Expects r7 = pid_tgid. Uses r1-r3."""
    ids = cfg.filters.target_ids
    if not ids:
        return []
    if src.tp_btf:
        return _recipient_in(src, ids, fail, labels)
    ok, other_thread = labels("target_ok"), labels("target_not_tid")
    return [*_gen_ids(src, R1, None),
            *_ids_filter(R1, ids, other_thread, labels),
            asm.ja(ok),
            asm.label(other_thread),
            asm.jmp32_reg("JNE", R1, R7, fail),
            asm.mov64_reg(R1, R7),
            asm.alu64_imm("RSH", R1, 32),
            *_ids_filter(R1, ids, fail, labels),
            asm.label(ok)]


def _inflight_slot(cfg: ProbeConfig, probe: int, missing: str) -> list:
    """r0 = the in-flight slot `probe` places after the current thread's first (r7 =
    pid_tgid), or jump to missing. An inlined array lookup. Clobbers r1-r5."""
    return [
        asm.mov32_reg(R1, R7),
        asm.alu32_imm("ADD", R1, probe),
        asm.alu32_imm("AND", R1, INFLIGHT_SLOTS - 1),
        asm.stx(W, R10, R1, STACK_KEY),
        asm.ld_map_fd(R1, cfg.maps.inflight),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, STACK_KEY),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, missing),
    ]


def _busy_owner(dst: int) -> list:
    """dst = the owner word of the current thread's busy slot (r7 = pid_tgid)."""
    return [asm.mov32_reg(dst, R7), asm.alu32_imm("OR", dst, INFLIGHT_BUSY)]


def _tid_key() -> list:
    """The current thread's id (r7 = pid_tgid) at STACK_KEY, and r2 pointing at it."""
    return [asm.stx(W, R10, R7, STACK_KEY), asm.mov64_reg(R2, R10),
            asm.alu64_imm("ADD", R2, STACK_KEY)]


def _lookup_inflight(cfg: ProbeConfig, missing: str) -> list:
    """r8 = the current thread's in-flight slot (claimed at entry) or jump to missing.
    Expects r7 = pid_tgid. Clobbers r0-r5."""
    if cfg.claim == CLAIM_TID_HASH:
        return [*_tid_key(), asm.ld_map_fd(R1, cfg.maps.inflight),
                asm.call("map_lookup_elem"), asm.jmp_imm("JEQ", R0, 0, missing),
                asm.mov64_reg(R8, R0)]
    found = f"{missing}_found"
    prog: list = []
    for probe in range(INFLIGHT_PROBES):
        following = f"{missing}_probe{probe + 1}"
        prog += [*_inflight_slot(cfg, probe, following),
                 asm.ldx(W, R1, R0, _OWNER), *_busy_owner(R2),
                 asm.jmp_reg("JEQ", R1, R2, found),
                 asm.label(following)]
    return [*prog, asm.ja(missing), asm.label(found), asm.mov64_reg(R8, R0)]


def _claim_inflight(cfg: ProbeConfig, full: str, labels: Labels) -> list:
    """r8 = an in-flight slot now owned (busy) by the current thread, or jump to full. A slot
    the thread still holds busy (its last call's exit never ran) is reused, as the map entry
    was before. Expects r7 = pid_tgid. Clobbers r0-r5."""
    claimed, search = labels("claimed"), labels("claim_search")
    prog = [
        # Fast path: the first slot, idle and owned by this thread since its last call.
        *_inflight_slot(cfg, 0, full),
        asm.mov64_reg(R8, R0),
        asm.mov32_reg(R0, R7),
        *_busy_owner(R1),
        asm.atomic_op(W, "CMPXCHG", R8, R1, _OWNER),
        asm.jmp32_reg("JEQ", R0, R7, claimed),
        asm.jmp32_reg("JEQ", R0, R1, claimed),
        asm.label(search),
    ]
    # Still busy for this thread somewhere?
    for probe in range(1, INFLIGHT_PROBES):
        following = labels("own_probe")
        prog += [*_inflight_slot(cfg, probe, following), asm.mov64_reg(R8, R0),
                 asm.ldx(W, R1, R8, _OWNER), *_busy_owner(R2),
                 asm.jmp_reg("JEQ", R1, R2, claimed), asm.label(following)]
    # Take the first slot that is free or idle (an idle slot's record is of no use any more).
    for probe in range(INFLIGHT_PROBES):
        following = labels("free_probe")
        prog += [
            *_inflight_slot(cfg, probe, following),
            asm.mov64_reg(R8, R0),
            asm.ldx(W, R0, R8, _OWNER),
            asm.mov32_reg(R2, R0),
            asm.alu32_imm("AND", R2, INFLIGHT_BUSY),
            asm.jmp32_imm("JNE", R2, 0, following),
            asm.mov32_reg(R2, R0),
            *_busy_owner(R1),
            asm.atomic_op(W, "CMPXCHG", R8, R1, _OWNER),
            asm.jmp32_reg("JEQ", R0, R2, claimed),
            asm.label(following),
        ]
    return [*prog, asm.ja(full), asm.label(claimed)]


def _release_inflight(cfg: ProbeConfig) -> list:
    """The call is over. CLAIM_CMPXCHG: the current thread's slot (r8) goes back to idle; the
    thread keeps it for its next call (r7 = pid_tgid). CLAIM_TID_HASH: the thread's entry is
    deleted (clobbers r0-r5)."""
    if cfg.claim == CLAIM_TID_HASH:
        return [*_tid_key(), asm.ld_map_fd(R1, cfg.maps.inflight),
                asm.call("map_delete_elem")]
    return [asm.st(W, R8, _f("kind"), rec.KIND_IDLE), asm.stx(W, R8, R7, _OWNER)]


def _store_call_by_tid(cfg: ProbeConfig, full: str) -> list:
    """CLAIM_TID_HASH: the record built on the stack becomes the thread's in-flight entry
    (BPF_ANY: an entry its last call left, when that call's exit never ran, is replaced, as
    the array path reuses its slot); jump to full when the map cannot take it. Clobbers
    r0-r5."""
    return [*_tid_key(), asm.ld_map_fd(R1, cfg.maps.inflight),
            asm.mov64_reg(R3, R10), asm.alu64_imm("ADD", R3, STACK_RECORD),
            asm.mov64_imm(R4, BPF_ANY), asm.call("map_update_elem"),
            asm.jmp_imm("JNE", R0, 0, full)]


def prologue() -> list:
    """The start of a tracepoint program: r6 = ctx, r7 = pid_tgid (tgid << 32 | tid, from
    bpf_get_current_pid_tgid). Clobbers r0-r5."""
    return [asm.mov64_reg(R6, R1), asm.call("get_current_pid_tgid"), asm.mov64_reg(R7, R0)]


# --- the sender read from its task_struct (TaskLayout) ------------------------------------



def epilogue(out: str) -> list:
    """The label `out` and the program's end: return 0."""
    return [asm.label(out), asm.mov64_imm(R0, 0), asm.exit_()]


# --- the programs ---------------------------------------------------------------------------

def _fill_call(base: int, off0: int, call: str, enter: EventFormat | None, suppressed: bool,
               uid_on_stack: bool = False) -> list:
    """Write a call's own fields into the record at base+off0 (the stack, or the thread's
    in-flight slot reused in place) and clear what a previous call left there. The sender's
    comm is already there; its uid is taken from the stack record with uid_on_stack, else
    from get_current_uid_gid. Expects r7 = pid_tgid, r9 = the signal; base must survive
    helper calls. `enter` None: the arguments are left cleared, for the caller to write
    (entry_regs.py reads them from the registers). Clobbers r0-r5."""
    def at(name: str) -> int:
        return off0 + _f(name)

    prog = [
        asm.stx(W, base, R7, at("sender_tid")),
        asm.mov64_reg(R1, R7),
        asm.alu64_imm("RSH", R1, 32),
        asm.stx(W, base, R1, at("sender_tgid")),
    ]
    if uid_on_stack:
        prog += [asm.ldx(W, R0, R10, STACK_RECORD + _f("sender_uid"))]
    else:
        prog += [asm.call("get_current_uid_gid")]
    prog += [
        asm.stx(W, base, R0, at("sender_uid")),
        asm.stx(W, base, R9, at("sig")),
        asm.st(W, base, at("kind"), rec.KIND_SUPPRESSED if suppressed else rec.KIND_CALL),
        asm.st(W, base, at("via"), rec.VIA_CODES[call]),
        asm.st(W, base, at("gen_result"), rec.GEN_NONE),
        asm.st(W, base, at("arg_pidfd"), -1),
    ]
    for name in ("ngen", "nemitted", "flags", "target_tid", "gen_code", "gen_errno",
                 "gen_group", "target_tgid", "target_src", "sender_ns_tgid", "sender_ns_tid",
                 "target_ns_tgid", "target_ns_tid"):
        prog.append(asm.st(W, base, at(name), 0))
    for name in ("arg_pid", "arg_tid", "ret", "target_cgroup", "sender_cgroup"):
        prog.append(asm.st(DW, base, at(name), 0))
    prog += [asm.st(DW, base, at("target_comm"), 0), asm.st(DW, base, at("target_comm") + 8, 0)]
    for rec_field, fmt_field in SYSCALL_ARGS[call].items():
        if enter is None:
            break
        fld = enter.field(fmt_field)
        prog += _load_s32(R1, R6, fld.offset, fld.size)
        prog.append(asm.stx(W if rec_field == "arg_pidfd" else DW, base, R1, at(rec_field)))
    prog += [
        asm.call("ktime_get_ns"),
        asm.stx(DW, base, R0, at("call_id")),
        asm.stx(DW, base, R0, at("ktime_ns")),
    ]
    return prog


def build_sys_enter(cfg: ProbeConfig, call: str, enter: EventFormat) -> list:
    """sys_enter_<call>: park the call in the thread's in-flight slot when its sender and
    signal pass. The slot is rewritten in place: no insert or delete per call."""
    labels, out, full = Labels(), "out", "inflight_full"
    sig = enter.field("sig")
    suppressed = call not in cfg.filters.vias  # parked only so generate knows it's no kernel signal
    comm = cfg.filters.comm_bytes()
    layout = cfg.task
    if layout is not None:
        return _build_sys_enter_task(cfg, call, enter, layout, suppressed)
    by_tid = cfg.claim == CLAIM_TID_HASH
    prog = [*prologue(), *_sender_filters(cfg, out, labels)]
    prog += [*_load_s32(R9, R6, sig.offset, sig.size),
             *signal_filter(R9, cfg.filters.signals, out, labels,
                             cfg.filters.excluded_signals)]
    if by_tid:
        prog += zero_stack_record()  # the whole record is stored: every byte initialised
    prog += current_comm_into_stack()
    prog += _comm_filter(R10, STACK_RECORD + _f("sender_comm"), comm, out)
    if by_tid:
        prog += [*_fill_call(R10, STACK_RECORD, call, enter, suppressed),
                 *context.sender_context(R10, STACK_RECORD, False, cfg.filters.cgroups, labels),
                 *_store_call_by_tid(cfg, full), asm.ja(out)]
    else:
        prog += _claim_inflight(cfg, full, labels)
        prog += [*_copy_sender_comm(), *_fill_call(R8, 0, call, enter, suppressed),
                 *context.sender_context(R8, 0, False, cfg.filters.cgroups, labels),
                 asm.ja(out)]
    prog += _inflight_full(cfg, full, labels)
    return prog + epilogue(out)


def _copy_sender_comm() -> list:
    """The comm read into the stack record, into the claimed slot (r8)."""
    prog: list = []
    for i in (0, 8):
        prog += [asm.ldx(DW, R1, R10, STACK_RECORD + _f("sender_comm") + i),
                 asm.stx(DW, R8, R1, _f("sender_comm") + i)]
    return prog


def _inflight_full(cfg: ProbeConfig, full: str, labels: Labels) -> list:
    """No slot for the call: counted (it is lost, never misattributed)."""
    return [asm.label(full), *bump_counter(cfg.maps.counters, COUNTER_INFLIGHT_FULL, labels)]


def _build_sys_enter_task(cfg: ProbeConfig, call: str, enter: EventFormat, layout: TaskLayout,
                          suppressed: bool) -> list:
    """build_sys_enter reading the sender from its task_struct: two helper calls (task, time)
    instead of four (pid_tgid, comm, uid, time): two helper calls less per call."""
    labels, out, full = Labels(), "out", "inflight_full"
    sig = enter.field("sig")
    by_tid = cfg.claim == CLAIM_TID_HASH
    prog = [*task_prologue(layout), *_sender_filters(cfg, out, labels)]
    prog += [*_load_s32(R9, R6, sig.offset, sig.size),
             *signal_filter(R9, cfg.filters.signals, out, labels,
                             cfg.filters.excluded_signals)]
    if by_tid:
        prog += zero_stack_record()
    prog += task_sender_to_stack(layout, cfg.filters.comm_bytes(), out, labels)
    if by_tid:
        prog += [*_fill_call(R10, STACK_RECORD, call, enter, suppressed, uid_on_stack=True),
                 *context.sender_context(R10, STACK_RECORD, True, cfg.filters.cgroups, labels),
                 *_store_call_by_tid(cfg, full), asm.ja(out)]
    else:
        prog += _claim_inflight(cfg, full, labels)
        prog += [*_copy_sender_comm(),
                 *_fill_call(R8, 0, call, enter, suppressed, uid_on_stack=True),
                 *context.sender_context(R8, 0, True, cfg.filters.cgroups, labels),
                 asm.ja(out)]
    prog += _inflight_full(cfg, full, labels)
    return prog + epilogue(out)


def build_signal_generate(cfg: ProbeConfig, src: Recipient | EventFormat) -> list:
    """signal:signal_generate: attribute the recipient to the in-flight call, or report a
    kernel-generated signal. `src` says which program this is (recipient_source); a bare
    EventFormat is the tracefs path."""
    if isinstance(src, EventFormat):
        src = Recipient(src, None)
    labels, out, kernel = Labels(), "out", "kernel_generated"
    f = cfg.filters
    regs = entry_regs.uses_regs(cfg)
    if regs is None:
        prog = [*prologue(), *_lookup_inflight(cfg, kernel)]
    else:
        # No sys_enter: a call not parked yet is read from the registers and parked here, its
        # ktime taken once for the call and this first recipient (STACK_TIMED).
        assert cfg.task is not None  # uses_regs() needs the sender's task layout
        parked, parked_now = labels("parked"), labels("parked_now")
        prog = [*task_prologue(cfg.task), *_lookup_inflight(cfg, "unparked"),
                asm.st(DW, R10, STACK_TIMED, 0), asm.ja(parked),
                asm.label("unparked"),
                *entry_regs.park_at_generate(cfg, regs, src, parked_now, kernel, out, labels),
                asm.label(parked_now), asm.st(DW, R10, STACK_TIMED, 1),
                asm.label(parked)]
    prog += [asm.ldx(W, R3, R8, _f("kind")), asm.jmp_imm("JEQ", R3, rec.KIND_IDLE, kernel)]
    # Inside a signal syscall, but for another signal (seccomp's SIGSYS, say): the kernel's own.
    prog += [*_gen_sig(src, R1), asm.ldx(W, R2, R8, _f("sig")),
             asm.jmp_reg("JNE", R1, R2, kernel)]
    # From here on the recipient belongs to the call parked in r8.
    prog += [asm.jmp_imm("JEQ", R3, rec.KIND_SUPPRESSED, out)]  # its via is filtered out
    if f.failed_only:
        # A call that generated a signal succeeded (kill(2) returns 0 when any recipient got
        # it), so -x needs none of its recipients. (No code after this jump: the verifier
        # rejects unreachable instructions.)
        prog.append(asm.ja(out))
    else:
        prog += _attribute_to_call(cfg, src, out, labels, timed_on_stack=regs is not None)
    prog.append(asm.label(kernel))
    # Kernel-generated: outside any signal syscall (or another signal than the call's).
    if not f.include_kernel:
        prog.append(asm.ja(out))
    else:
        prog += _sender_filters(cfg, out, labels)
        prog += _gen_sig(src, R9)
        prog += signal_filter(R9, f.signals, out, labels, f.excluded_signals)
        prog += _target_filter(cfg, src, out, labels)
        prog += context.either_side_in_cgroups(f.cgroups, src.tp_btf, out, labels)
        prog += zero_stack_record()
        prog += current_comm_into_stack()
        prog += _comm_filter(R10, STACK_RECORD + _f("sender_comm"), f.comm_bytes(), out)
        prog += fill_sender_into_stack()
        prog += context.sender_cgroup(R10, STACK_RECORD, labels)
        prog += context.sender_ns_ids(R10, STACK_RECORD, False, labels)
        prog += _copy_generate_fields(R10, STACK_RECORD, src, labels)
        prog += kernel_sigkill_stack(cfg.maps.stacks, labels)  # why the kernel killed
        prog += [
            asm.stx(W, R10, R9, STACK_RECORD + _f("sig")),
            asm.st(W, R10, STACK_RECORD + _f("kind"), rec.KIND_KERNEL),
            asm.st(W, R10, STACK_RECORD + _f("via"), rec.VIA_KERNEL),
            asm.st(W, R10, STACK_RECORD + _f("arg_pidfd"), -1),
            asm.call("ktime_get_ns"),
            asm.stx(DW, R10, R0, STACK_RECORD + _f("ktime_ns")),
            asm.mov64_reg(R9, R10),
            asm.alu64_imm("ADD", R9, STACK_RECORD),
        ]
        prog += cfg.output.write(R9, labels)
    return prog + epilogue(out)



def _recipient_filtered_out(skip: str, matched: str, out: str) -> list:
    """At `skip`: a recipient left out by -T is noted on the call parked in r8 (so that the call
    is not reported as one that generated nothing), and the program ends; `matched` follows."""
    return [asm.label(skip),
            asm.ldx(W, R1, R8, _f("flags")),
            asm.alu32_imm("OR", R1, rec.FLAG_RECIPIENT_FILTERED),
            asm.stx(W, R8, R1, _f("flags")),
            asm.ja(out),
            asm.label(matched)]


def _attribute_to_call(cfg: ProbeConfig, src: Recipient, out: str, labels: Labels,
                       timed_on_stack: bool = False) -> list:
    """The recipient belongs to the call parked in r8: complete it or write a FANOUT record.
    `timed_on_stack`: a non-zero u64 at STACK_TIMED says the call was parked by this very
    event, whose ktime it already holds (one bpf_ktime_get_ns less per call)."""
    f = cfg.filters
    prog: list = []
    if f.target_ids and src.tp_btf:
        # The recipient's own tid or tgid decides; one left out by -T is noted on the call,
        # so that the call is not reported as one that generated nothing.
        matched, skip = labels("target_ok"), labels("target_skip")
        prog += [
            *_recipient_in(src, f.target_ids, skip, labels),
            asm.ja(matched),
            *_recipient_filtered_out(skip, matched, out),
        ]
    elif f.target_ids:
        # Tracefs: the recipient's tid, or (tgkill/rt_tgsigqueueinfo) the process argument.
        matched, skip = labels("target_ok"), labels("target_skip")
        by_args = labels("target_args")
        prog += [
            *_gen_ids(src, R1, None),
            *_ids_filter(R1, f.target_ids, by_args, labels),
            asm.ja(matched),
            # tgkill/rt_tgsigqueueinfo to a thread of a -T process: the process is arg_pid.
            asm.label(by_args),
            asm.ldx(DW, R1, R8, _f("arg_pid")),
            *[asm.jmp_imm("JEQ", R1, i, matched) for i in sorted(f.target_ids)],
            *_recipient_filtered_out(skip, matched, out),
        ]
    if f.cgroups:
        # The sender's cgroup (noted at entry) or the recipient's; one left out is noted too.
        matched, skip = labels("cgroup_ok"), labels("cgroup_skip")
        prog += [*context.recipient_of_call_in_cgroups(f.cgroups, src.tp_btf, matched, skip,
                                                       labels),
                 *_recipient_filtered_out(skip, matched, out)]
    fanout = labels("fanout")
    prog += [asm.ldx(W, R9, R8, _f("ngen")), asm.jmp_imm("JNE", R9, 0, fanout)]
    # First recipient: completes the parked record.
    prog += _copy_generate_fields(R8, 0, src, labels)
    timed = labels("timed")
    if timed_on_stack:
        prog += [asm.ldx(DW, R1, R10, STACK_TIMED), asm.jmp_imm("JNE", R1, 0, timed)]
    prog += [asm.call("ktime_get_ns"), asm.stx(DW, R8, R0, _f("ktime_ns")),
             asm.label(timed), asm.st(W, R8, _f("ngen"), 1), asm.ja(out)]
    # Further recipient: a FANOUT record of its own, tied to the call by call_id.
    prog.append(asm.label(fanout))
    prog += [asm.alu64_imm("ADD", R9, 1), asm.stx(W, R8, R9, _f("ngen"))]
    for i in range(0, rec.RECORD_SIZE, 8):
        prog += [asm.ldx(DW, R1, R8, i), asm.stx(DW, R10, R1, STACK_RECORD + i)]
    prog += _copy_generate_fields(R10, STACK_RECORD, src, labels)
    prog += [
        asm.st(W, R10, STACK_RECORD + _f("kind"), rec.KIND_FANOUT),
        asm.alu64_imm("SUB", R9, 1),
        asm.stx(W, R10, R9, STACK_RECORD + _f("ngen")),  # this recipient's index in the call
        asm.call("ktime_get_ns"),
        asm.stx(DW, R10, R0, STACK_RECORD + _f("ktime_ns")),
        asm.mov64_reg(R9, R10),
        asm.alu64_imm("ADD", R9, STACK_RECORD),
    ]
    prog += cfg.output.write(R9, labels, on_success=[
        asm.ldx(W, R1, R8, _f("nemitted")), asm.alu64_imm("ADD", R1, 1),
        asm.stx(W, R8, R1, _f("nemitted")),
    ])
    prog.append(asm.ja(out))
    return prog


def build_sys_exit(cfg: ProbeConfig, call: str, exit_fmt: EventFormat,
                   unparked: Callable[[Labels, str], list] | None = None) -> list:
    """sys_exit_<call>: complete the parked call with its return value and write it out; the
    thread's in-flight record goes back to idle (it is reused by the thread's next call).
    `unparked(labels, out)`: what to do when no call is parked (entry_regs.exit_unparked);
    None: nothing."""
    labels, out, idle = Labels(), "out", "idle"
    f = cfg.filters
    prog = [*prologue(), *_lookup_inflight(cfg, out if unparked is None else "unparked")]
    prog += [asm.ldx(W, R1, R8, _f("kind")), asm.jmp_imm("JEQ", R1, rec.KIND_IDLE, out),
             asm.jmp_imm("JEQ", R1, rec.KIND_SUPPRESSED, idle)]
    ret = exit_fmt.field("ret")
    prog += [asm.ldx(DW, R9, R6, ret.offset)]
    if f.failed_only:
        prog.append(asm.jmp_imm("JSGE", R9, 0, idle))
    prog += context.call_in_cgroups(f.cgroups, idle, labels)
    if f.target_ids:
        # No recipient recorded: the call matches -T only through its arguments.
        keep = labels("target_keep")
        prog += [asm.ldx(W, R1, R8, _f("ngen")), asm.jmp_imm("JNE", R1, 0, keep),
                 asm.ldx(W, R1, R8, _f("flags")),
                 asm.jmp_imm("JSET", R1, rec.FLAG_RECIPIENT_FILTERED, idle),
                 *args_match_targets(R8, 0, f.target_ids, keep, idle), asm.label(keep)]
    # A call with recipients keeps the generation time; one without gets the exit time.
    timed = labels("timed")
    prog += [asm.stx(DW, R8, R9, _f("ret")),
             asm.ldx(W, R1, R8, _f("ngen")), asm.jmp_imm("JNE", R1, 0, timed),
             asm.call("ktime_get_ns"), asm.stx(DW, R8, R0, _f("ktime_ns")),
             asm.label(timed)]
    prog += cfg.output.write(R8, labels)
    prog += [asm.label(idle), *_release_inflight(cfg)]
    if unparked is not None:
        prog += [asm.ja(out), asm.label("unparked"), *unparked(labels, out)]
    return prog + epilogue(out)


def args_match_targets(base: int, off0: int, ids: frozenset[int], keep: str,
                       drop: str) -> list:
    """-T for a call that generated nothing (its record at base+off0): jump to keep when its
    pid arguments name one of `ids`, else to drop. A sender in a nested pid namespace
    (FLAG_SENDER_NESTED_PIDNS) passed that namespace's numbers, which no host id matches.
    Clobbers r1."""
    prog = [asm.ldx(W, R1, base, off0 + _f("flags")),
            asm.jmp_imm("JSET", R1, rec.FLAG_SENDER_NESTED_PIDNS, drop)]
    for name in ("arg_pid", "arg_tid"):
        prog += [asm.ldx(DW, R1, base, off0 + _f(name))]
        prog += [asm.jmp_imm("JEQ", R1, i, keep) for i in sorted(ids)]
    return [*prog, asm.ja(drop)]


def syscalls_to_trace(filters: Filters) -> tuple[str, ...]:
    """The signal syscalls to probe. Calls that --via leaves out are still watched when kernel
    signals are wanted, so that their signals are not mistaken for kernel-generated ones."""
    if filters.include_kernel:
        return rec.SYSCALL_VIAS
    return tuple(call for call in rec.SYSCALL_VIAS if call in filters.syscall_vias)


Target = tuple[str, str]  # (tracepoint system, event)


def signal_probe_plans(cfg: ProbeConfig, prefix: str = "") -> Iterator[ProgramPlan]:
    """The ProgramPlan of every signal probe (roles EXIT, GENERATE, ENTRY), in attach order:
    exits first, then generate, then entries, so that a call seen entering is seen leaving.
    A generator: each program is built only when asked for (load_programs).

    The exit program does not depend on the call (the parked record says which call it was),
    so one program serves every sys_exit tracepoint whose `ret` field sits at the same offset
    (all of them, on every kernel so far): fewer programs to verify at start-up."""
    calls = syscalls_to_trace(cfg.filters)
    regs = entry_regs.uses_regs(cfg)
    if regs is not None:
        yield from _regs_probe_plans(cfg, regs, calls, prefix)
        return
    exits: dict[int, list[str]] = {}
    for call in calls:
        ret = event_format("syscalls", f"sys_exit_{call}").field("ret")
        exits.setdefault(ret.offset, []).append(call)
    for index, group in enumerate(exits.values()):
        first = f"sys_exit_{group[0]}"
        yield ProgramPlan(f"{prefix}exit{index or ''}"[:15], Role.EXIT,
                          tuple(("syscalls", f"sys_exit_{call}") for call in group),
                          build_sys_exit(cfg, group[0], event_format("syscalls", first)))
    src = recipient_source(cfg)
    yield ProgramPlan(f"{prefix}generate"[:15], Role.GENERATE,
                      ((TP_BTF if src.tp_btf else "signal", "signal_generate"),),
                      build_signal_generate(cfg, src))
    for call in calls:
        event = f"sys_enter_{call}"
        yield ProgramPlan(f"{prefix}e_{call}"[:15], Role.ENTRY, (("syscalls", event),),
                          build_sys_enter(cfg, call, event_format("syscalls", event)))


def _regs_probe_plans(cfg: ProbeConfig, regs: entry_regs.RegsLayout, calls: tuple[str, ...],
                      prefix: str) -> Iterator[ProgramPlan]:
    """signal_probe_plans without sys_enter (entry_regs.py): an exit program per call (each
    builds its own call's record when nothing was parked), then generate."""
    for call in calls:
        event = f"sys_exit_{call}"
        fmt = event_format("syscalls", event)
        unparked = entry_regs.exit_unparked(cfg, regs, call, fmt.field("ret").offset)
        yield ProgramPlan(f"{prefix}x_{call}"[:15], Role.EXIT, (("syscalls", event),),
                          build_sys_exit(cfg, call, fmt, unparked))
    src = recipient_source(cfg)
    yield ProgramPlan(f"{prefix}generate"[:15], Role.GENERATE,
                      ((TP_BTF if src.tp_btf else "signal", "signal_generate"),),
                      build_signal_generate(cfg, src))


def entry_path(cfg: ProbeConfig) -> str:
    """Which way the probes of `cfg` learn a call, for selftest: 'registers' (two probes per
    signal, entry_regs.py) or 'sys_enter' (three)."""
    return "registers" if entry_regs.uses_regs(cfg) is not None else "sys_enter"
