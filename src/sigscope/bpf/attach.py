"""Attaching programs to tracepoints; every attachment is owned by fds, so process exit detaches.

Tracepoint: perf_event_open(PERF_TYPE_TRACEPOINT, config=<event id>, pid=-1, cpu=0) — one event
is enough, the program runs for the tracepoint on every CPU — then either a BPF link
(BPF_LINK_CREATE, attach type BPF_PERF_EVENT, Linux >= 5.15) or PERF_EVENT_IOC_SET_BPF, and
PERF_EVENT_IOC_ENABLE. Raw tracepoint: BPF_RAW_TRACEPOINT_OPEN. Nothing is pinned and nothing is
written to tracefs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from sigscope.bpf import features, uapi
from sigscope.bpf.program import Program
from sigscope.bpf.syscall import (
    BPFError,
    Closable,
    LinkCreateAttr,
    PerfEventAttr,
    RawTracepointOpenAttr,
    bpf,
    close_fd,
    ioctl,
    perf_event_open,
)

__all__ = ["Attachment", "attach_raw_tracepoint", "attach_tracepoint"]

ATTACH_LINK = "bpf_link"
ATTACH_IOCTL = "perf_ioctl"
ATTACH_RAW_TRACEPOINT = "raw_tracepoint"


class Attachment(Closable):
    """A program attached somewhere; close() (or leaving the with-block) detaches it."""

    def __init__(
        self, description: str, method: str, perf_fd: int | None, link_fd: int | None
    ) -> None:
        self.description = description
        self.method = method
        self.perf_fd = perf_fd
        self.link_fd = link_fd

    @property
    def closed(self) -> bool:
        return self.perf_fd is None and self.link_fd is None

    def close(self) -> None:
        # The link goes first so the program is detached before its perf event disappears.
        link_fd, self.link_fd = self.link_fd, None
        perf_fd, self.perf_fd = self.perf_fd, None
        if link_fd is not None:
            close_fd(link_fd)
        if perf_fd is not None:
            if self.method == ATTACH_IOCTL:
                try:
                    ioctl(perf_fd, uapi.PERF_EVENT_IOC_DISABLE, 0)
                except BPFError:
                    pass  # closing the fd detaches anyway
            close_fd(perf_fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return f"Attachment({self.description}, {self.method}, {state})"


def detach_all(attachments: Iterable[Attachment]) -> None:
    """Close several attachments at once.

    Each detach waits for an RCU grace period (tens of milliseconds); closing them from parallel
    threads lets those waits overlap, so 13 probes detach in about the time of one instead of
    half a second."""
    pending = [a for a in attachments if not a.closed]
    if len(pending) <= 1:
        for attachment in pending:
            attachment.close()
        return
    import threading

    threads = [threading.Thread(target=a.close, daemon=True) for a in pending]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _tracepoint_id(system: str, name: str) -> int:
    """The perf config of a tracepoint: its tracefs id."""
    from sigscope.bpf.tracefs import event_format

    return event_format(system, name).id


def attach_tracepoint(
    prog: Program, system: str, name: str, use_link: bool | None = None
) -> Attachment:
    """Attach a BPF_PROG_TYPE_TRACEPOINT program to tracepoint `system`:`name`.

    `use_link` forces the BPF link (True) or the PERF_EVENT_IOC_SET_BPF path (False); by default
    the link is used where the kernel has it.
    """
    if use_link is None:
        use_link = features.has("perf_event_link")
    description = f"{system}:{name}"
    attr = PerfEventAttr(
        type=uapi.PERF_TYPE_TRACEPOINT,
        config=_tracepoint_id(system, name),
        sample_period=1,
        wakeup_events=1,
        flags=uapi.PERF_ATTR_FLAG_DISABLED,
    )
    try:
        perf_fd = perf_event_open(attr, pid=-1, cpu=0)
    except BPFError as err:
        err.detail = f"tracepoint {description}"
        raise
    link_fd: int | None = None
    try:
        if use_link:
            link_attr = LinkCreateAttr(
                prog_fd=prog.fd, target_fd=perf_fd, attach_type=uapi.BPF_PERF_EVENT
            )
            link_fd = bpf(uapi.BPF_LINK_CREATE, link_attr)
        else:
            ioctl(perf_fd, uapi.PERF_EVENT_IOC_SET_BPF, prog.fd)
        ioctl(perf_fd, uapi.PERF_EVENT_IOC_ENABLE, 0)
    except BPFError as err:
        if link_fd is not None:
            close_fd(link_fd)
        close_fd(perf_fd)
        err.detail = f"attaching program {prog.name or '(unnamed)'} to {description}"
        raise
    method = ATTACH_LINK if use_link else ATTACH_IOCTL
    return Attachment(description, method, perf_fd, link_fd)


def attach_tp_btf(prog: Program, name: str) -> Attachment:
    """Attach a BTF-typed raw tracepoint program (BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP;
    its target was fixed at load time by attach_btf_id) with BPF_RAW_TRACEPOINT_OPEN and no
    name. `name` only describes the attachment. Raises BPFError."""
    return _raw_tracepoint_open(prog, 0, f"tp_btf {name}", f"tp_btf:{name}")


def attach_raw_tracepoint(prog: Program, name: str) -> Attachment:
    """Attach a BPF_PROG_TYPE_RAW_TRACEPOINT program to raw tracepoint `name` (e.g.
    ``signal_generate``) with BPF_RAW_TRACEPOINT_OPEN."""
    name_buf = ctypes.create_string_buffer(name.encode("ascii"))
    return _raw_tracepoint_open(prog, ctypes.addressof(name_buf), f"raw tracepoint {name}",
                                f"raw_tracepoint:{name}")


def _raw_tracepoint_open(prog: Program, name_ptr: int, detail: str,
                         description: str) -> Attachment:
    """BPF_RAW_TRACEPOINT_OPEN of prog at the tracepoint name at name_ptr (0: the target the
    program was loaded for). Raises BPFError, its detail set."""
    attr = RawTracepointOpenAttr(name=name_ptr, prog_fd=prog.fd)
    try:
        fd = bpf(uapi.BPF_RAW_TRACEPOINT_OPEN, attr)
    except BPFError as err:
        err.detail = detail
        raise
    return Attachment(description, ATTACH_RAW_TRACEPOINT, None, fd)
