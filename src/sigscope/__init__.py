"""sigscope: every signal on a Linux system, traced with eBPF from pure Python."""

__version__ = "0.1.0"
