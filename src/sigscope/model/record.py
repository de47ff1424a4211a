"""The signal record: declared once, used by the BPF program builder and by the decoder.

This plays the part of the shared header in a libbpf tool: the kernel side writes fields at the
offsets computed here, the user side unpacks them with the ``struct`` format computed here, so the
two can never disagree.

One record is one send attempt and recipient:

* ``KIND_CALL``   — written at a signal syscall's exit. Carries the arguments, the return value and
  the first recipient (if the call generated any signal; ``gen_result == GEN_NONE`` otherwise).
* ``KIND_FANOUT`` — a further recipient of the same call (kill(-pgid), kill(-1)); joined in user
  space with its ``KIND_CALL`` record through ``call_id`` to learn the return value.
* ``KIND_KERNEL`` — a signal the kernel generated outside any signal syscall. For a SIGKILL,
  ``kstack`` holds the id of its kernel stack in the stack map, plus one (0: none taken;
  negative: bpf_get_stackid's -errno), from which user space reads why it was sent
  (model/origins.py).

With ``--fate`` (programs/fate.py) further kinds follow a signal to its end. They reuse the same
layout; the ``sender_*`` fields then name the thread the record happened in:

* ``KIND_DELIVER``   — signal:signal_deliver, in the receiving thread. ``sig``; ``gen_code`` =
  si_code; ``gen_errno`` = si_errno; ``ret`` = sa_handler (0 SIG_DFL, 1 SIG_IGN, else the
  handler's address); ``arg_tid`` = sa_flags.
* ``KIND_EXIT``      — sched:sched_process_exit, in the exiting thread. ``ret`` = the task's
  exit_code (read through its BTF offset; ``FLAG_EXIT_CODE_UNKNOWN`` without BTF);
  ``gen_group`` = group_dead (the last thread of the process).
* ``KIND_CONSUMED``  — rt_sigtimedwait (sigwaitinfo/sigtimedwait) returned ``sig``: the signal
  was dequeued without signal_deliver.
* ``KIND_SIGACTION`` — rt_sigaction is about to set ``sig``'s handler to ``ret`` (only SIG_DFL or
  SIG_IGN are reported): the kernel flushes a pending signal that becomes ignored.
* ``KIND_SIGCONT``   — a SIGCONT was generated (raw signal_generate, programs/fate_cont.py):
  ``target_tid``/``arg_pid`` = the target's tid/tgid, ``arg_tid`` = its ``signal_struct.flags``
  just after prepare_signal() (a SIGNAL_CLD_* bit: a stopped process was resumed),
  ``gen_result`` = the generation's result.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

KIND_CALL = 1
KIND_FANOUT = 2
KIND_KERNEL = 3
KIND_DELIVER = 4
KIND_EXIT = 5
KIND_CONSUMED = 6
KIND_SIGACTION = 7
KIND_SIGCONT = 8
FATE_KINDS = frozenset({KIND_DELIVER, KIND_EXIT, KIND_CONSUMED, KIND_SIGACTION, KIND_SIGCONT})

# States of an in-flight record (the kernel's per-thread map; never written out): the thread is
# not inside a signal syscall, or is inside one whose `via` the filters leave out.
KIND_IDLE = 0
KIND_SUPPRESSED = 0xFF

# flags: a recipient of this call was generated but left out by the target filter.
FLAG_RECIPIENT_FILTERED = 1
# KIND_EXIT: no BTF, so the exit code could not be read (`ret` is meaningless).
FLAG_EXIT_CODE_UNKNOWN = 2
# KIND_EXIT: no BTF and no group_dead field in the tracepoint (before Linux 6.16): whether this
# thread's exit ended its thread group is unknown (`gen_group` is 0 without meaning "no").
FLAG_GROUP_UNKNOWN = 4
# A parked call (in-flight only, copied into its FANOUT records): its sender is in one of the
# --cgroup/--container cgroups, so every recipient of the call matches that filter.
FLAG_SENDER_IN_CGROUP = 8
# The sender's pid namespace is not the initial one (struct pid's level > 0, read with BTF): the
# call's pid arguments are numbers of that namespace, not host ids (programs/context.py).
FLAG_SENDER_NESTED_PIDNS = 16

# target_src: which signal_generate program filled the target fields (programs/signal.py).
# TARGET_SRC_NONE: nothing generated. TARGET_SRC_TRACEFS: the perf-event tracepoint, which
# reports the recipient's tid and comm but not its tgid (user space may look that up in /proc,
# best effort). TARGET_SRC_TASK: the BTF-typed raw tracepoint, read from the recipient's
# task_struct at generation: tid, tgid and comm as the kernel had them.
TARGET_SRC_NONE = 0
TARGET_SRC_TRACEFS = 1
TARGET_SRC_TASK = 2

# gen_result when a syscall generated nothing (EPERM, ESRCH, EINVAL, signal 0 probes).
GEN_NONE = -1

# `via` codes as stored in records; index into VIA_NAMES.
VIA_KERNEL = 0
VIA_NAMES = (
    "kernel",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_send_signal",
)
VIA_CODES = {name: code for code, name in enumerate(VIA_NAMES)}
SYSCALL_VIAS = VIA_NAMES[1:]
# Thread-directed calls that name the thread group too: arg_pid is the tgid, arg_tid the tid.
TGID_VIAS = frozenset({"tgkill", "rt_tgsigqueueinfo"})


class Field(NamedTuple):
    name: str
    fmt: str  # struct format character (little-endian, no padding)
    size: int
    offset: int


def _layout(spec: list[tuple[str, str]]) -> tuple[dict[str, Field], int]:
    fields: dict[str, Field] = {}
    offset = 0
    for name, fmt in spec:
        size = struct.calcsize("<" + fmt)
        # Natural alignment keeps every BPF load/store aligned, which the verifier wants.
        align = min(size, 8) if not fmt.endswith("s") else 1
        assert offset % align == 0, f"{name} misaligned at {offset}"
        fields[name] = Field(name, fmt, size, offset)
        offset += size
    assert offset % 8 == 0
    return fields, offset


# The order is the wire order. Keep 8-byte fields 8-aligned.
_SPEC = [
    ("ktime_ns", "Q"),      # bpf_ktime_get_ns() when the record was written
    ("call_id", "Q"),       # ktime at syscall entry; (sender_tid, call_id) joins CALL and FANOUT
    ("kind", "I"),          # KIND_*
    ("nemitted", "I"),      # CALL: FANOUT records successfully written for this call
    ("ret", "q"),           # syscall return value (CALL only)
    ("arg_pid", "q"),       # kill/tkill/rt_sigqueueinfo pid, tgkill/rt_tgsigqueueinfo tgid
    ("arg_tid", "q"),       # tgkill/rt_tgsigqueueinfo tid
    ("via", "I"),
    ("sender_tgid", "I"),
    ("sender_tid", "I"),
    ("sender_uid", "I"),
    ("sig", "i"),
    ("arg_pidfd", "i"),     # pidfd_send_signal's fd, -1 otherwise
    ("ngen", "I"),          # CALL: recipients generated; FANOUT: index of this recipient
    ("gen_code", "i"),      # signal_generate: si_code
    ("gen_errno", "i"),     # signal_generate: si_errno
    ("target_tid", "i"),    # signal_generate: pid of the receiving task
    ("gen_group", "i"),     # signal_generate: group (process-directed) signal
    ("gen_result", "i"),    # signal_generate: TRACE_SIGNAL_* result, GEN_NONE if none
    ("flags", "I"),         # FLAG_* bits
    ("kstack", "i"),        # KERNEL SIGKILL: its kernel stack's id in the stack map + 1; 0 none
    ("target_tgid", "I"),   # signal_generate (tp_btf): the receiving task's tgid; 0 unknown
    ("target_src", "I"),    # TARGET_SRC_*: where target_tid/target_tgid/target_comm came from
    ("sender_comm", "16s"),
    ("target_comm", "16s"),
    ("target_cgroup", "Q"), # signal_generate (tp_btf): recipient's cgroup v2 id; 0 unknown
    ("sender_cgroup", "Q"), # the sender's cgroup v2 id (bpf_get_current_cgroup_id); 0 unknown
    ("sender_ns_tgid", "I"),  # sender's tgid in its own pid namespace; 0 unknown
    ("sender_ns_tid", "I"),   # sender's tid in its own pid namespace; 0 unknown
    ("target_ns_tgid", "I"),  # signal_generate (tp_btf): recipient's tgid in its own pid ns
    ("target_ns_tid", "I"),   # signal_generate (tp_btf): recipient's tid in its own pid ns
]

FIELDS, RECORD_SIZE = _layout(_SPEC)
RECORD_STRUCT = struct.Struct("<" + "".join(f.fmt for f in FIELDS.values()))
FIELD_NAMES = tuple(FIELDS)
assert RECORD_STRUCT.size == RECORD_SIZE

# The decoder's fast view of a record: what tells records apart besides time comes as one bytes
# value (hashable, so a storm of equal records is decoded once), unpacked fully only when new.
HOT_HEAD = ("ktime_ns", "call_id", "kind", "nemitted")
assert FIELD_NAMES[:4] == HOT_HEAD
HOT_STRUCT = struct.Struct(f"<QQII{RECORD_SIZE - 24}s")
REST_STRUCT = struct.Struct("<" + "".join(f.fmt for f in list(FIELDS.values())[4:]))


def offset(name: str) -> int:
    """Byte offset of a record field, for the program builder."""
    return FIELDS[name].offset
