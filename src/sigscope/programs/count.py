"""The counting programs of ``sigscope top``: the tracing programs of signal.py, counting instead
of writing records.

signal.py decides *what* is one signal (enter parks the call, signal_generate attributes each
recipient to it or sees a kernel-generated signal, exit completes the call) and hands every
finished record to its output (programs/common.py ``Output``). Here the output is
``CountOutput``: code that folds the record into a count key and adds one to the key's count in
a BPF hash map.
So ``top`` counts exactly what ``trace`` would print, one per send attempt and recipient, with
the same filters in the kernel — and no record ever crosses to user space.

The count key (``KEY_FIELDS``): sender tgid and comm, target pid and comm, signal, via, result
(the syscall's return, 0 for kernel-generated signals and for fan-out recipients, which are
counted when generated, before the call returns: kill(2) returns 0 as soon as any recipient got
the signal), outcome (TRACE_SIGNAL_* or -1 when nothing was generated). ``target_pid`` holds, as
the decoder would read it: when a signal was generated, the recipient's tgid as the tp_btf
program read it from the task; without it (tracefs path) the tgid argument for
tgkill/rt_tgsigqueueinfo, else the recipient task id from signal_generate (a thread id: user
space maps it to its process, best effort); else the pid argument (a thread id for tkill, the
pidfd for pidfd_send_signal).

When the map is full a new key cannot be added: the signal is counted in the per-CPU
``COUNTER_OTHER`` slot instead, never dropped.

With ``cgroups`` the key also holds the sender's and the recipient's cgroup v2 ids
(``CGROUP_KEY_FIELDS``, 80 bytes): only for the container labels and ``top --containers``;
every other counter's key and programs are exactly those without them.

``keep`` (a set of KEY_FIELDS names; None: all) folds keys: every field not kept is stored as 0,
so signals that differ only in those fields count under one key. The exporter keeps only what its
labels show, and its map then holds one key per label set, however many processes come and go.
"""

from __future__ import annotations

import errno
import struct
from typing import NamedTuple

from sigscope.bpf import asm
from sigscope.bpf.asm import DW, R0, R1, R2, R10, W
from sigscope.bpf.uapi import BPF_NOEXIST
from sigscope.model import record as rec
from sigscope.programs import common
from sigscope.programs.common import STACK_USED, Labels, bump_counter, update_elem

# A slot of the `counters` array after the common ones: signals whose key did not fit the map.
COUNTER_OTHER = common.NUM_COUNTERS
NUM_COUNTERS = common.NUM_COUNTERS + 1

# The count key, in map order (every field naturally aligned, no padding).
KEY_FIELDS = (
    ("sender_tgid", "I"),
    ("target_pid", "i"),
    ("sig", "i"),
    ("via", "I"),
    ("result", "i"),     # 0 or -errno
    ("outcome", "i"),    # TRACE_SIGNAL_* or rec.GEN_NONE
    ("reserved", "Q"),
    ("sender_comm", "16s"),
    ("target_comm", "16s"),
)
# Appended only when a counter asks for them (container labels, top --containers): the cgroup
# v2 ids the kernel read at the event. Without them the key is KEY_FIELDS alone, unchanged.
CGROUP_KEY_FIELDS = (
    ("sender_cgroup", "Q"),  # bpf_get_current_cgroup_id() of the sender (0: not read)
    ("target_cgroup", "Q"),  # the recipient's, read by the tp_btf program (0: not read)
)
CGROUP_FIELD_NAMES = tuple(name for name, _ in CGROUP_KEY_FIELDS)
KEY_STRUCT = struct.Struct("<" + "".join(fmt for _, fmt in KEY_FIELDS))
CGROUP_KEY_STRUCT = struct.Struct("<" + "".join(fmt for _, fmt in CGROUP_KEY_FIELDS))
KEY_FIELD_NAMES = (*(name for name, _ in KEY_FIELDS if name != "reserved"),
                   *CGROUP_FIELD_NAMES)
KEY_SIZE = KEY_STRUCT.size
CGROUP_KEY_SIZE = KEY_SIZE + CGROUP_KEY_STRUCT.size
VALUE_SIZE = 8  # u64 count
_KEY_OFFSETS: dict[str, int] = {}
_offset = 0
for _name, _fmt in (*KEY_FIELDS, *CGROUP_KEY_FIELDS):
    _KEY_OFFSETS[_name] = _offset
    _offset += struct.calcsize("<" + _fmt)
assert KEY_SIZE == 64 and _offset == CGROUP_KEY_SIZE == 80


class KeyLayout(NamedTuple):
    """Where the key is built on the stack (below what signal.py uses), and the slot of the
    initial value for an insert just below it."""

    size: int
    key_slot: int
    one_slot: int


def key_layout(cgroups: bool = False) -> KeyLayout:
    """The layout of the count key: KEY_FIELDS (64 bytes), or with ``cgroups`` also
    CGROUP_KEY_FIELDS (80 bytes)."""
    size = CGROUP_KEY_SIZE if cgroups else KEY_SIZE
    key_slot = -(STACK_USED + size)
    layout = KeyLayout(size, key_slot, key_slot - 8)
    assert -layout.one_slot <= 512 and key_slot % 8 == 0
    return layout


_BASE = key_layout()
# The slots of the 64-byte key (the layout of every counter that asks for no cgroup id).
_STACK_COUNT_KEY = _BASE.key_slot
_STACK_ONE = _BASE.one_slot

_TG_VIAS = (rec.VIA_CODES["tgkill"], rec.VIA_CODES["rt_tgsigqueueinfo"])


def _build_key(src: int, labels: Labels, keep: frozenset[str] | None = None,
               layout: KeyLayout = _BASE) -> list:
    """The count key on the stack from the record at src; fields not in `keep` (None: all are
    kept) are 0; the cgroup ids only in a layout that has them. Uses r1."""
    f = rec.offset

    def kept(name: str) -> bool:
        return keep is None or name in keep

    def _k(name: str) -> int:
        return layout.key_slot + _KEY_OFFSETS[name]

    prog: list = []
    if layout.size == CGROUP_KEY_SIZE:
        for name in CGROUP_FIELD_NAMES:  # the record's fields of the same names
            if kept(name):
                prog += [asm.ldx(DW, R1, src, f(name)), asm.stx(DW, R10, R1, _k(name))]
            else:
                prog.append(asm.st(DW, R10, _k(name), 0))
    for key_name, rec_name in (("sender_tgid", "sender_tgid"), ("sig", "sig"), ("via", "via"),
                               ("outcome", "gen_result"), ("result", "ret")):
        # ret is a little-endian s64 holding 0 or -errno: its low word is the s32 result.
        if kept(key_name):
            prog += [asm.ldx(W, R1, src, f(rec_name)), asm.stx(W, R10, R1, _k(key_name))]
        else:
            prog.append(asm.st(W, R10, _k(key_name), 0))
    prog.append(asm.st(DW, R10, _k("reserved"), 0))
    for name in ("sender_comm", "target_comm"):
        for i in (0, 8):
            if kept(name):
                prog += [asm.ldx(DW, R1, src, f(name) + i), asm.stx(DW, R10, R1, _k(name) + i)]
            else:
                prog.append(asm.st(DW, R10, _k(name) + i, 0))
    if not kept("target_pid"):
        return [*prog, asm.st(W, R10, _k("target_pid"), 0)]
    generated, arg_pid, pidfd, store = (labels("generated"), labels("arg_pid"), labels("pidfd"),
                                        labels("store_target"))
    prog += [
        asm.ldx(W, R1, src, f("gen_result")),
        asm.jmp32_imm("JNE", R1, rec.GEN_NONE, generated),
        # Nothing generated: the target is what the call asked for.
        asm.ldx(W, R1, src, f("via")),
        asm.jmp32_imm("JEQ", R1, rec.VIA_CODES["pidfd_send_signal"], pidfd),
        asm.ja(arg_pid),
        asm.label(generated),
        # The recipient's tgid, where the tp_btf program read it from the task (0: tracefs).
        asm.ldx(W, R1, src, f("target_tgid")),
        asm.jmp32_imm("JNE", R1, 0, store),
        asm.ldx(W, R1, src, f("via")),
        *[asm.jmp32_imm("JEQ", R1, via, arg_pid) for via in _TG_VIAS],
        asm.ldx(W, R1, src, f("target_tid")),
        asm.ja(store),
        asm.label(pidfd),
        asm.ldx(W, R1, src, f("arg_pidfd")),
        asm.ja(store),
        asm.label(arg_pid),
        asm.ldx(W, R1, src, f("arg_pid")),
        asm.label(store),
        asm.stx(W, R10, R1, _k("target_pid")),
    ]
    return prog


def _add_one(counts_fd: int, percpu: bool, missing: str, layout: KeyLayout = _BASE) -> list:
    """counts[key] += 1 or jump to missing. Clobbers r0-r5."""
    add = (asm.alu64_imm("ADD", R1, 1) if percpu else None)
    prog = [
        asm.ld_map_fd(R1, counts_fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, layout.key_slot),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, missing),
    ]
    if add is not None:
        # This CPU's own slot; tracing programs do not nest on a CPU: no atomic needed.
        prog += [asm.ldx(DW, R1, R0, 0), add, asm.stx(DW, R0, R1, 0)]
    else:
        prog += [asm.mov64_imm(R1, 1), asm.atomic_add(DW, R0, R1, 0)]
    return prog


def _bump_other(counters_fd: int, labels: Labels, layout: KeyLayout = _BASE) -> list:
    # The stack key slot may hold part of the count key being built: use the one slot.
    return bump_counter(counters_fd, COUNTER_OTHER, labels, slot=layout.one_slot)


class CountOutput(NamedTuple):
    """The output of `sigscope top`: each finished record is counted under its key in the
    `counts` map (module docstring: `keep`), never written out. A key that does not fit the
    map is counted in counters[COUNTER_OTHER]."""

    counts: int      # fd of the hash or per-CPU hash: key -> u64
    counters: int    # fd of the per-CPU array of NUM_COUNTERS u64
    percpu: bool     # counts is a per-CPU hash: plain adds, no atomics needed
    keep: frozenset[str] | None = None
    cgroups: bool = False  # the key has CGROUP_KEY_FIELDS (key_layout(True)): 80 bytes

    def write(self, data_reg: int, labels: Labels, on_success: list | None = None) -> list:
        insert, retry, other, done = (labels("insert"), labels("retry"), labels("other"),
                                      labels("count_done"))
        layout = key_layout(self.cgroups)
        return [
            *_build_key(data_reg, labels, self.keep, layout),
            *_add_one(self.counts, self.percpu, insert, layout),
            asm.ja(done),
            asm.label(insert),
            # A new key. Another CPU may insert the same key meanwhile (EEXIST): add to that one.
            asm.st(DW, R10, layout.one_slot, 1),
            *update_elem(self.counts, layout.key_slot, layout.one_slot, BPF_NOEXIST),
            asm.jmp_imm("JEQ", R0, 0, done),
            asm.jmp_imm("JEQ", R0, -errno.EEXIST, retry),
            asm.ja(other),  # E2BIG (preallocated map full) or ENOMEM
            asm.label(retry),
            *_add_one(self.counts, self.percpu, other, layout),
            asm.ja(done),
            asm.label(other),
            *_bump_other(self.counters, labels, layout),
            asm.label(done),
            *(on_success or []),
        ]
