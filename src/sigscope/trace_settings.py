"""The settings of `sigscope trace` and their defaults, apart from tracer.py so that building the
command line does not import the tracing machinery (as top_settings.py for `top`)."""

DEFAULT_BUFFER_SIZE = 16 << 20  # bytes of ring buffer (or of perf buffers, all CPUs together)
BUFFER_KINDS = ("auto", "ringbuf", "perf")  # auto: the ring buffer where the kernel has it
DEFAULT_POLL_INTERVAL_MS = 10
