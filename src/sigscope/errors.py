"""The errors sigscope raises, in one hierarchy, each class with its command-line exit status.

    SigscopeError                 exit 1  an operation failed (e.g. a send the kernel refused)
    ├── UsageError                exit 2  a bad filter or option value given to the API or CLI
    ├── SetupError                exit 3  the system cannot trace: privileges, tracefs, BTF,
    │                                     an architecture or kernel feature missing, an
    │                                     exporter dependency missing, an address in use
    ├── KernelError               exit 1  a bpf(2)/perf_event_open(2) call failed, the
    │                                     verifier refused a program
    └── InternalError             exit 1  a bug of sigscope (e.g. the assembler refused its own
                                          program): please report it

Any other exception reaching the command line is a bug as well: it is reported like an
InternalError, as one line, "internal error: ...", with a hint to report it (the traceback
only with SIGSCOPE_DEBUG=1).

This module imports nothing, so every layer may import it, bpf/ included: it is a vocabulary
the layers share, not a layer above them. The classes keep the builtin bases they had before
(``BPFError`` is still an ``OSError``, ``UsageError`` a ``ValueError``), so existing
``except OSError``/``except ValueError`` code keeps working.

The messages of the library speak the API's words (``signals=``, ``pids=``); the command line
rewrites those names into its flags (``-s/--signal``) through ``UsageError.for_cli``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SETUP = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class SigscopeError(Exception):
    """Base of every error sigscope raises on purpose; ``str()`` is one line for the user."""

    exit_code = EXIT_ERROR


class UsageError(SigscopeError, ValueError):
    """A filter or option value that cannot be honoured (API or command line)."""

    exit_code = EXIT_USAGE

    def for_cli(self, flags: dict[str, str]) -> str:
        """The message with the API's parameter names (``signals=``) replaced by the command
        line's flags (``flags["signals"] == "-s/--signal"``); unknown names are kept."""
        import re  # not at import time: the command line imports this module first thing

        return re.sub(r"\b([a-z_]+)=", lambda m: flags.get(m.group(1), m.group(0)), str(self))


class SetupError(SigscopeError):
    """The system is not set up to trace (privileges, tracefs, BTF, kernel features...)."""

    exit_code = EXIT_SETUP


class KernelError(SigscopeError):
    """The kernel refused a BPF operation (a bpf(2) call failed, the verifier said no)."""

    exit_code = EXIT_ERROR


class InternalError(SigscopeError):
    """sigscope contradicted itself: a bug to report."""

    exit_code = EXIT_ERROR


__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SETUP", "EXIT_USAGE",
           "InternalError", "KernelError", "SetupError", "SigscopeError", "UsageError"]
