"""Kernel UAPI constants, named exactly as in linux/bpf.h and linux/perf_event.h.

Only what sigscope uses (plus the neighbours needed to keep enum values honest). The values are
part of the stable kernel ABI; architecture differences live in arch.py, not here.
"""

from __future__ import annotations

# --- enum bpf_cmd --------------------------------------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_RUN = BPF_PROG_TEST_RUN
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19
BPF_TASK_FD_QUERY = 20
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_FREEZE = 22
BPF_BTF_GET_NEXT_ID = 23
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_ENABLE_STATS = 32
BPF_ITER_CREATE = 33
BPF_LINK_DETACH = 34
BPF_PROG_BIND_MAP = 35

# Names for error messages ("BPF_MAP_CREATE: Operation not permitted"). Only the commands above
# exist at this point of the module, so every BPF_* global so far is a command.
BPF_CMD_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("BPF_") and name != "BPF_PROG_RUN"
}

# --- enum bpf_map_type ---------------------------------------------------------------------------
BPF_MAP_TYPE_UNSPEC = 0
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_CGROUP_ARRAY = 8
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27

# --- enum bpf_prog_type --------------------------------------------------------------------------
BPF_PROG_TYPE_UNSPEC = 0
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_PERF_EVENT = 7
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26

# --- enum bpf_attach_type ------------------------------------------------------------------------
BPF_TRACE_RAW_TP = 23
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_PERF_EVENT = 41
BPF_TRACE_KPROBE_MULTI = 42

# --- BPF_MAP_UPDATE_ELEM flags -------------------------------------------------------------------
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# --- BPF_MAP_CREATE map_flags --------------------------------------------------------------------
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_F_NUMA_NODE = 1 << 2
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4
BPF_F_STACK_BUILD_ID = 1 << 5
BPF_F_ZERO_SEED = 1 << 6
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_WRONLY_PROG = 1 << 8
BPF_F_MMAPABLE = 1 << 10

# --- BPF_PROG_LOAD prog_flags --------------------------------------------------------------------
BPF_F_STRICT_ALIGNMENT = 1 << 0
BPF_F_ANY_ALIGNMENT = 1 << 1
BPF_F_SLEEPABLE = 1 << 4

# --- helper flags --------------------------------------------------------------------------------
# bpf_get_stackid()
BPF_F_SKIP_FIELD_MASK = 0xFF
BPF_F_USER_STACK = 1 << 8
BPF_F_FAST_STACK_CMP = 1 << 9
BPF_F_REUSE_STACKID = 1 << 10
# bpf_perf_event_output()
BPF_F_INDEX_MASK = 0xFFFFFFFF
BPF_F_CURRENT_CPU = BPF_F_INDEX_MASK
# bpf_ringbuf_output/submit/discard()
BPF_RB_NO_WAKEUP = 1 << 0
BPF_RB_FORCE_WAKEUP = 1 << 1

# Ring buffer record header (struct bpf_ringbuf_hdr: u32 len | flag bits, u32 pg_off).
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8

# ld_imm64 src_reg values.
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

# enum bpf_stats_type (BPF_ENABLE_STATS); sysctl kernel.bpf_stats_enabled does the same.
BPF_STATS_RUN_TIME = 0

# --- perf_event_open(2) --------------------------------------------------------------------------
# enum perf_type_id
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2

# enum perf_sw_ids
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_BPF_OUTPUT = 10

# enum perf_event_sample_format
PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_CPU = 1 << 7
PERF_SAMPLE_PERIOD = 1 << 8
PERF_SAMPLE_RAW = 1 << 10

# perf_event_open() flags
PERF_FLAG_FD_NO_GROUP = 1 << 0
PERF_FLAG_FD_OUTPUT = 1 << 1
PERF_FLAG_PID_CGROUP = 1 << 2
PERF_FLAG_FD_CLOEXEC = 1 << 3

# sizeof(struct perf_event_attr) per published version
PERF_ATTR_SIZE_VER0 = 64
PERF_ATTR_SIZE_VER5 = 112
PERF_ATTR_SIZE_VER6 = 120
PERF_ATTR_SIZE_VER7 = 128
PERF_ATTR_SIZE_VER8 = 136

# Bits of the perf_event_attr bitfield word (the u64 after read_format), in declaration order.
PERF_ATTR_FLAG_DISABLED = 1 << 0
PERF_ATTR_FLAG_INHERIT = 1 << 1
PERF_ATTR_FLAG_PINNED = 1 << 2
PERF_ATTR_FLAG_EXCLUSIVE = 1 << 3
PERF_ATTR_FLAG_EXCLUDE_USER = 1 << 4
PERF_ATTR_FLAG_EXCLUDE_KERNEL = 1 << 5
PERF_ATTR_FLAG_EXCLUDE_HV = 1 << 6
PERF_ATTR_FLAG_EXCLUDE_IDLE = 1 << 7
PERF_ATTR_FLAG_MMAP = 1 << 8
PERF_ATTR_FLAG_COMM = 1 << 9
PERF_ATTR_FLAG_FREQ = 1 << 10
PERF_ATTR_FLAG_INHERIT_STAT = 1 << 11
PERF_ATTR_FLAG_ENABLE_ON_EXEC = 1 << 12
PERF_ATTR_FLAG_TASK = 1 << 13
PERF_ATTR_FLAG_WATERMARK = 1 << 14
PERF_ATTR_FLAG_PRECISE_IP_SHIFT = 15  # two bits
PERF_ATTR_FLAG_MMAP_DATA = 1 << 17
PERF_ATTR_FLAG_SAMPLE_ID_ALL = 1 << 18
PERF_ATTR_FLAG_EXCLUDE_HOST = 1 << 19
PERF_ATTR_FLAG_EXCLUDE_GUEST = 1 << 20
PERF_ATTR_FLAG_EXCLUDE_CALLCHAIN_KERNEL = 1 << 21
PERF_ATTR_FLAG_EXCLUDE_CALLCHAIN_USER = 1 << 22
PERF_ATTR_FLAG_MMAP2 = 1 << 23
PERF_ATTR_FLAG_COMM_EXEC = 1 << 24
PERF_ATTR_FLAG_USE_CLOCKID = 1 << 25
PERF_ATTR_FLAG_CONTEXT_SWITCH = 1 << 26
PERF_ATTR_FLAG_WRITE_BACKWARD = 1 << 27

# enum perf_event_type (records in the perf mmap ring)
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9


# --- ioctl request encoding (asm-generic/ioctl.h; same on x86_64 and aarch64) --------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_char: str, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (ord(type_char) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_char: str, nr: int) -> int:
    return _IOC(_IOC_NONE, type_char, nr, 0)


def _IOW(type_char: str, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_char, nr, size)


def _IOR(type_char: str, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_char, nr, size)


PERF_EVENT_IOC_ENABLE = _IO("$", 0)
PERF_EVENT_IOC_DISABLE = _IO("$", 1)
PERF_EVENT_IOC_RESET = _IO("$", 3)
PERF_EVENT_IOC_SET_OUTPUT = _IO("$", 5)
PERF_EVENT_IOC_ID = _IOR("$", 7, 8)  # __u64 * (a pointer: 8 bytes on our 64-bit arches)
PERF_EVENT_IOC_SET_BPF = _IOW("$", 8, 4)  # __u32
PERF_EVENT_IOC_PAUSE_OUTPUT = _IOW("$", 9, 4)  # __u32
