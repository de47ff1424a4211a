"""Can we load BPF programs and open tracepoint perf events? And the memlock limit.

Loading tracing programs needs CAP_BPF + CAP_PERFMON (Linux >= 5.8) or CAP_SYS_ADMIN. We read
the effective capability set from /proc/self/status rather than trusting the uid, so a root
process stripped of capabilities (some containers) and a capable non-root process are both
judged right.
"""

from __future__ import annotations

import resource

from sigscope.errors import SetupError

__all__ = [
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "PrivilegeError",
    "check_privileges",
    "effective_capabilities",
    "raise_memlock_limit",
]

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

PRIVILEGE_MESSAGE = "sigscope needs root or CAP_BPF and CAP_PERFMON (run with sudo)"


class PrivilegeError(SetupError, PermissionError):
    """The process lacks the capabilities to trace; str() is one line telling what to do."""

    def __init__(self, message: str = PRIVILEGE_MESSAGE) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def effective_capabilities(status_text: str | None = None) -> int:
    """The CapEff bit mask of this process (or parsed from the given /proc/<pid>/status text)."""
    if status_text is None:
        with open("/proc/self/status") as status:
            status_text = status.read()
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    raise PrivilegeError("cannot read effective capabilities (no CapEff in /proc/self/status)")


def has_capability(mask: int, capability: int) -> bool:
    return bool(mask >> capability & 1)


def check_privileges(cap_eff: int | None = None) -> None:
    """Raise PrivilegeError unless CAP_SYS_ADMIN or both CAP_BPF and CAP_PERFMON are effective.

    `cap_eff` overrides the mask read from /proc/self/status (for tests).
    """
    mask = effective_capabilities() if cap_eff is None else cap_eff
    if has_capability(mask, CAP_SYS_ADMIN):
        return
    if has_capability(mask, CAP_BPF) and has_capability(mask, CAP_PERFMON):
        return
    raise PrivilegeError()


def raise_memlock_limit() -> bool:
    """Lift RLIMIT_MEMLOCK to infinity so older kernels (< 5.11, which charge BPF memory to it)
    can create our maps. Returns whether it worked; not being allowed is fine, since newer
    kernels charge BPF memory to the cgroup instead."""
    try:
        resource.setrlimit(
            resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    except (OSError, ValueError):
        return False
    return True
