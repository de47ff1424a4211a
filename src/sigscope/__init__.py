"""sigscope: every signal on a Linux system, traced with eBPF from pure Python.

    import sigscope
    with sigscope.trace(signals="USR1") as tracer:
        for event in tracer:
            print(event.to_dict())

The API names are imported on first use, so that `import sigscope` (and the command line's
start-up) stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "trace": ("sigscope.tracer", "trace"),
    "Tracer": ("sigscope.tracer", "Tracer"),
    "TraceError": ("sigscope.tracer", "TraceError"),
    "Event": ("sigscope.model.event", "Event"),
    "Filters": ("sigscope.model.filters", "Filters"),
    "send_signal": ("sigscope.send", "send_signal"),
    "SigscopeError": ("sigscope.errors", "SigscopeError"),
    "UsageError": ("sigscope.errors", "UsageError"),
    "SetupError": ("sigscope.errors", "SetupError"),
    "KernelError": ("sigscope.errors", "KernelError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sigscope' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
