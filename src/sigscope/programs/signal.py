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

from collections.abc import Iterator
from typing import NamedTuple

from sigscope.bpf import asm, features
from sigscope.bpf.asm import DW, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, W
from sigscope.bpf.tracefs import EventFormat, event_format
from sigscope.bpf.uapi import BPF_ANY
from sigscope.model import record as rec
from sigscope.model.filters import Filters
from sigscope.model.record import offset as _f
from sigscope.programs.common import (
    COUNTER_INFLIGHT_FULL,
    STACK_KEY,
    STACK_RECORD,
    Labels,
    Output,
    ProgramPlan,
    Role,
    bump_counter,
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


def _copy_generate_fields(dst: int, dst_base: int, gen: EventFormat,
                          labels: Labels) -> list:
    """Copy signal_generate's recipient fields from ctx (r6) to dst+dst_base+record offsets.
    Uses r1-r5. The comm is read in 4-byte words (tracepoint context reads must be aligned)
    and cut at its NUL (comm_cut_at_nul: the tracepoint copies all 16 bytes of the task's)."""
    out: list = []
    for src_name, dst_name in (("code", "gen_code"), ("errno", "gen_errno"), ("pid", "target_tid"),
                               ("group", "gen_group"), ("result", "gen_result")):
        fld = gen.field(src_name)
        out += [asm.ldx(W, R1, R6, fld.offset), asm.stx(W, dst, R1, dst_base + _f(dst_name))]
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


def _target_filter(cfg: ProbeConfig, gen: EventFormat, fail: str, labels: Labels) -> list:
    """Fall through when the recipient's pid (a thread id) is one of -T, or when the recipient
    is the current thread (a fault, a broken pipe) and its process is one of -T. Expects
    r7 = pid_tgid. Uses r1."""
    ids = cfg.filters.target_ids
    if not ids:
        return []
    ok, other_thread = labels("target_ok"), labels("target_not_tid")
    return [asm.ldx(W, R1, R6, gen.field("pid").offset),
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

def _fill_call(base: int, off0: int, call: str, enter: EventFormat, suppressed: bool,
               uid_on_stack: bool = False) -> list:
    """Write a call's own fields into the record at base+off0 (the stack, or the thread's
    in-flight slot reused in place) and clear what a previous call left there. The sender's
    comm is already there; its uid is taken from the stack record with uid_on_stack, else
    from get_current_uid_gid. Expects r7 = pid_tgid, r9 = the signal; base must survive
    helper calls. Clobbers r0-r5."""
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
                 "gen_group"):
        prog.append(asm.st(W, base, at(name), 0))
    for name in ("arg_pid", "arg_tid", "ret"):
        prog.append(asm.st(DW, base, at(name), 0))
    prog += [asm.st(DW, base, at("target_comm"), 0), asm.st(DW, base, at("target_comm") + 8, 0)]
    for rec_field, fmt_field in SYSCALL_ARGS[call].items():
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
                 *_store_call_by_tid(cfg, full), asm.ja(out)]
    else:
        prog += _claim_inflight(cfg, full, labels)
        prog += [*_copy_sender_comm(), *_fill_call(R8, 0, call, enter, suppressed),
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
                 *_store_call_by_tid(cfg, full), asm.ja(out)]
    else:
        prog += _claim_inflight(cfg, full, labels)
        prog += [*_copy_sender_comm(),
                 *_fill_call(R8, 0, call, enter, suppressed, uid_on_stack=True), asm.ja(out)]
    prog += _inflight_full(cfg, full, labels)
    return prog + epilogue(out)


def build_signal_generate(cfg: ProbeConfig, gen: EventFormat) -> list:
    """signal:signal_generate: attribute the recipient to the in-flight call, or report a
    kernel-generated signal."""
    labels, out, kernel = Labels(), "out", "kernel_generated"
    f = cfg.filters
    sig = gen.field("sig")
    prog = [*prologue(), *_lookup_inflight(cfg, kernel)]
    prog += [asm.ldx(W, R3, R8, _f("kind")), asm.jmp_imm("JEQ", R3, rec.KIND_IDLE, kernel)]
    # Inside a signal syscall, but for another signal (seccomp's SIGSYS, say): the kernel's own.
    prog += [asm.ldx(W, R1, R6, sig.offset), asm.ldx(W, R2, R8, _f("sig")),
             asm.jmp_reg("JNE", R1, R2, kernel)]
    # From here on the recipient belongs to the call parked in r8.
    prog += [asm.jmp_imm("JEQ", R3, rec.KIND_SUPPRESSED, out)]  # its via is filtered out
    if f.failed_only:
        # A call that generated a signal succeeded (kill(2) returns 0 when any recipient got
        # it), so -x needs none of its recipients. (No code after this jump: the verifier
        # rejects unreachable instructions.)
        prog.append(asm.ja(out))
    else:
        prog += _attribute_to_call(cfg, gen, out, labels)
    prog.append(asm.label(kernel))
    # Kernel-generated: outside any signal syscall (or another signal than the call's).
    if not f.include_kernel:
        prog.append(asm.ja(out))
    else:
        prog += _sender_filters(cfg, out, labels)
        prog += [asm.ldx(W, R9, R6, sig.offset)]
        prog += signal_filter(R9, f.signals, out, labels, f.excluded_signals)
        prog += _target_filter(cfg, gen, out, labels)
        prog += zero_stack_record()
        prog += current_comm_into_stack()
        prog += _comm_filter(R10, STACK_RECORD + _f("sender_comm"), f.comm_bytes(), out)
        prog += fill_sender_into_stack()
        prog += _copy_generate_fields(R10, STACK_RECORD, gen, labels)
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



def _attribute_to_call(cfg: ProbeConfig, gen: EventFormat, out: str, labels: Labels) -> list:
    """The recipient belongs to the call parked in r8: complete it or write a FANOUT record."""
    f = cfg.filters
    prog: list = []
    if f.target_ids:
        # A recipient left out by -T is noted on the call, so that the call is not reported
        # as one that generated nothing.
        matched, skip = labels("target_ok"), labels("target_skip")
        by_args = labels("target_args")
        prog += [
            asm.ldx(W, R1, R6, gen.field("pid").offset),
            *_ids_filter(R1, f.target_ids, by_args, labels),
            asm.ja(matched),
            # tgkill/rt_tgsigqueueinfo to a thread of a -T process: the process is arg_pid.
            asm.label(by_args),
            asm.ldx(DW, R1, R8, _f("arg_pid")),
            *[asm.jmp_imm("JEQ", R1, i, matched) for i in sorted(f.target_ids)],
            asm.label(skip),
            asm.ldx(W, R1, R8, _f("flags")),
            asm.alu32_imm("OR", R1, rec.FLAG_RECIPIENT_FILTERED),
            asm.stx(W, R8, R1, _f("flags")),
            asm.ja(out),
            asm.label(matched),
        ]
    fanout = labels("fanout")
    prog += [asm.ldx(W, R9, R8, _f("ngen")), asm.jmp_imm("JNE", R9, 0, fanout)]
    # First recipient: completes the parked record.
    prog += _copy_generate_fields(R8, 0, gen, labels)
    prog += [asm.call("ktime_get_ns"), asm.stx(DW, R8, R0, _f("ktime_ns")),
             asm.st(W, R8, _f("ngen"), 1), asm.ja(out)]
    # Further recipient: a FANOUT record of its own, tied to the call by call_id.
    prog.append(asm.label(fanout))
    prog += [asm.alu64_imm("ADD", R9, 1), asm.stx(W, R8, R9, _f("ngen"))]
    for i in range(0, rec.RECORD_SIZE, 8):
        prog += [asm.ldx(DW, R1, R8, i), asm.stx(DW, R10, R1, STACK_RECORD + i)]
    prog += _copy_generate_fields(R10, STACK_RECORD, gen, labels)
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


def build_sys_exit(cfg: ProbeConfig, call: str, exit_fmt: EventFormat) -> list:
    """sys_exit_<call>: complete the parked call with its return value and write it out; the
    thread's in-flight record goes back to idle (it is reused by the thread's next call)."""
    labels, out, idle = Labels(), "out", "idle"
    f = cfg.filters
    prog = [*prologue(), *_lookup_inflight(cfg, out)]
    prog += [asm.ldx(W, R1, R8, _f("kind")), asm.jmp_imm("JEQ", R1, rec.KIND_IDLE, out),
             asm.jmp_imm("JEQ", R1, rec.KIND_SUPPRESSED, idle)]
    ret = exit_fmt.field("ret")
    prog += [asm.ldx(DW, R9, R6, ret.offset)]
    if f.failed_only:
        prog.append(asm.jmp_imm("JSGE", R9, 0, idle))
    if f.target_ids:
        # No recipient recorded: the call matches -T only through its arguments.
        keep = labels("target_keep")
        prog += [asm.ldx(W, R1, R8, _f("ngen")), asm.jmp_imm("JNE", R1, 0, keep),
                 asm.ldx(W, R1, R8, _f("flags")),
                 asm.jmp_imm("JSET", R1, rec.FLAG_RECIPIENT_FILTERED, idle)]
        for name in ("arg_pid", "arg_tid"):
            prog += [asm.ldx(DW, R1, R8, _f(name))]
            prog += [asm.jmp_imm("JEQ", R1, i, keep) for i in sorted(f.target_ids)]
        prog += [asm.ja(idle), asm.label(keep)]
    # A call with recipients keeps the generation time; one without gets the exit time.
    timed = labels("timed")
    prog += [asm.stx(DW, R8, R9, _f("ret")),
             asm.ldx(W, R1, R8, _f("ngen")), asm.jmp_imm("JNE", R1, 0, timed),
             asm.call("ktime_get_ns"), asm.stx(DW, R8, R0, _f("ktime_ns")),
             asm.label(timed)]
    prog += cfg.output.write(R8, labels)
    prog += [asm.label(idle), *_release_inflight(cfg)]
    return prog + epilogue(out)


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
    exits: dict[int, list[str]] = {}
    for call in calls:
        ret = event_format("syscalls", f"sys_exit_{call}").field("ret")
        exits.setdefault(ret.offset, []).append(call)
    for index, group in enumerate(exits.values()):
        first = f"sys_exit_{group[0]}"
        yield ProgramPlan(f"{prefix}exit{index or ''}"[:15], Role.EXIT,
                          tuple(("syscalls", f"sys_exit_{call}") for call in group),
                          build_sys_exit(cfg, group[0], event_format("syscalls", first)))
    yield ProgramPlan(f"{prefix}generate"[:15], Role.GENERATE, (("signal", "signal_generate"),),
                      build_signal_generate(cfg, event_format("signal", "signal_generate")))
    for call in calls:
        event = f"sys_enter_{call}"
        yield ProgramPlan(f"{prefix}e_{call}"[:15], Role.ENTRY, (("syscalls", event),),
                          build_sys_enter(cfg, call, event_format("syscalls", event)))
