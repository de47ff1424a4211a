"""The settings of `sigscope top` and their defaults, apart from top.py so that building the
command line does not import the counting machinery."""

DEFAULT_MAX_KEYS = 10240
MAX_MAX_KEYS = 1 << 20
DEFAULT_INTERVAL_S = 1.0
MAP_KINDS = ("auto", "percpu", "hash")
PERCPU_MAX_CPUS = 32  # auto: per-CPU count map up to this many possible CPUs
SORT_KEYS = ("count", "signal", "sender", "target")
