"""Find (or mount) tracefs and read tracepoint ``format`` files.

Tracepoint record layouts differ between kernel versions and architectures, so the BPF programs
never hard-code a field offset: they take it from the event's ``format`` file at run time, which
this module parses into :class:`EventFormat`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sigscope.errors import SetupError

__all__ = [
    "TRACEFS_MOUNT_POINT",
    "TRACEFS_SEARCH_PATHS",
    "EventFormat",
    "Field",
    "TracefsError",
    "available",
    "event_format",
    "locate_tracefs",
    "mount_tracefs",
    "parse_format",
    "tracefs_root",
]

TRACEFS_MOUNT_POINT = "/sys/kernel/tracing"
# Newer kernels expose tracefs on its own mount point; older setups only have it under debugfs.
TRACEFS_SEARCH_PATHS: tuple[PathLike, ...] = (TRACEFS_MOUNT_POINT, "/sys/kernel/debug/tracing")


# A directory given as str or os.PathLike (tests pass pathlib paths; sigscope uses str: pathlib
# costs start-up time).
PathLike = str | os.PathLike[str]


class TracefsError(SetupError):
    """tracefs is unavailable, or an event or its format is missing or malformed (one line)."""


class Field(NamedTuple):
    """One ``field:`` line of a format file.

    ``type`` is the declared C type without the field name and array dimensions
    (``char`` for ``char comm[16]``, ``const char *`` for a pointer). ``array_len`` is None for a
    scalar, the element count for a fixed array (0 when the kernel prints ``[]``). ``data_loc``
    marks ``__data_loc``/``__rel_loc`` fields: the 4 bytes at ``offset`` hold the real
    offset (low 16 bits) and length (high 16 bits) of variable-length data; ``rel_loc`` says that
    the offset is relative to the end of this field rather than to the start of the record.
    """

    name: str
    type: str
    offset: int
    size: int
    signed: bool
    array_len: int | None = None
    data_loc: bool = False
    rel_loc: bool = False


class EventFormat(NamedTuple):
    """A parsed tracepoint format: ``id`` is the perf_event_attr.config for PERF_TYPE_TRACEPOINT."""

    system: str
    name: str
    id: int
    fields: dict[str, Field]

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            known = ", ".join(self.fields) or "none"
            raise TracefsError(
                f"tracepoint {self.system}:{self.name} has no field {name!r} (fields: {known})"
            ) from None


_FIELD_LINE = re.compile(
    r"^\s*field(?: special)?:(?P<decl>[^;]*);"
    r"\s*offset:(?P<offset>\d+);"
    r"\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>-?\d+);)?"
)
# Type, then the field name, then optional array dimensions: "char comm[16]", "const char * s".
_DECLARATION = re.compile(
    r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)$"
)
_DIMENSION = re.compile(r"\[([^\]]*)\]")


def _array_length(dims: str) -> int | None:
    if not dims:
        return None
    length = 1
    for dim in _DIMENSION.findall(dims):
        dim = dim.strip()
        if not dim:
            return 0
        try:
            length *= int(dim, 0)
        except ValueError:
            # A symbolic bound (macro name) the kernel did not expand: the count is unknown, but
            # `size` still tells the caller how many bytes the array occupies.
            return 0
    return length


def _parse_field(line: str) -> Field:
    match = _FIELD_LINE.match(line)
    if match is None:
        raise TracefsError(f"malformed field line in tracepoint format: {line.strip()!r}")
    decl = match.group("decl").strip()
    data_loc = rel_loc = False
    for prefix in ("__data_loc ", "__rel_loc "):
        if decl.startswith(prefix):
            data_loc = True
            rel_loc = prefix == "__rel_loc "
            decl = decl[len(prefix):].strip()
    parts = _DECLARATION.match(decl)
    if parts is None:
        raise TracefsError(f"malformed field declaration in tracepoint format: {decl!r}")
    field_type = parts.group("type").strip()
    array_len = _array_length(parts.group("dims").strip())
    if data_loc:
        # "__data_loc char[] name": the [] belongs to the type; the field is a 32-bit locator.
        field_type = re.sub(r"\s*\[[^\]]*\]\s*$", "", field_type)
        array_len = None
    if not field_type:
        raise TracefsError(f"malformed field declaration in tracepoint format: {decl!r}")
    signed = match.group("signed")
    return Field(
        name=parts.group("name"),
        type=field_type,
        offset=int(match.group("offset")),
        size=int(match.group("size")),
        signed=signed is not None and int(signed) != 0,
        array_len=array_len,
        data_loc=data_loc,
        rel_loc=rel_loc,
    )


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse the text of an event ``format`` file (common_* and event fields alike)."""
    name: str | None = None
    event_id: int | None = None
    fields: dict[str, Field] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("print fmt:"):
            break  # the print format may span lines and contains nothing we need
        if stripped.startswith("name:"):
            name = stripped[len("name:"):].strip()
        elif stripped.startswith("ID:"):
            try:
                event_id = int(stripped[len("ID:"):].strip())
            except ValueError:
                message = f"malformed ID line in tracepoint format: {stripped!r}"
                raise TracefsError(message) from None
        elif stripped.startswith("field"):
            field = _parse_field(line)
            fields.setdefault(field.name, field)
    if not name:
        raise TracefsError("not a tracepoint format: no 'name:' line")
    if event_id is None:
        raise TracefsError(f"not a tracepoint format for {name!r}: no 'ID:' line")
    if not fields:
        raise TracefsError(f"not a tracepoint format for {name!r}: no 'field:' lines")
    return EventFormat(system=system, name=name, id=event_id, fields=fields)


def mount_tracefs(target: PathLike) -> None:
    """mount("nodev", target, "tracefs", 0, NULL); raises OSError with the errno on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p,
    ]
    libc.mount.restype = ctypes.c_int
    if libc.mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def _has_events(root: PathLike) -> bool:
    return os.path.isdir(os.path.join(root, "events"))


def locate_tracefs(
    search_paths: Sequence[PathLike] = TRACEFS_SEARCH_PATHS,
    mount_point: PathLike = TRACEFS_MOUNT_POINT,
    mount: Callable[[PathLike], None] | None = mount_tracefs,
) -> PathLike:
    """The first of `search_paths` with an ``events/`` directory; else mount tracefs on
    `mount_point` (unless `mount` is None) and return it. Uncached; see :func:`tracefs_root`."""
    for root in search_paths:
        if _has_events(root):
            return root
        if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
            raise TracefsError(f"cannot read tracefs at {root}: Permission denied (run as root)")
    if mount is None:
        searched = ", ".join(str(p) for p in search_paths)
        raise TracefsError(f"tracefs is not mounted (looked in {searched})")
    try:
        mount(mount_point)
    except OSError as exc:
        reason = exc.strerror or os.strerror(exc.errno or errno.EIO)
        raise TracefsError(
            f"tracefs is not mounted and mounting it on {mount_point} failed: {reason}"
        ) from None
    if not _has_events(mount_point):
        raise TracefsError(
            f"mounted tracefs on {mount_point} but it has no events/ directory "
            "(kernel built without CONFIG_EVENT_TRACING?)"
        )
    return mount_point


@functools.cache
def tracefs_root() -> PathLike:
    """The tracefs directory of this system, mounting tracefs if needed (cached)."""
    return locate_tracefs()


def _events_of(format_path: str) -> str:
    """<root>/events of <root>/events/<system>/<name>/format."""
    return os.path.dirname(os.path.dirname(os.path.dirname(format_path)))


def _event_dir(system: str, name: str, root: PathLike | None) -> str:
    base = root if root is not None else tracefs_root()
    return os.path.join(base, "events", system, name)


@functools.cache
def event_format(system: str, name: str, root: PathLike | None = None) -> EventFormat:
    """Parse ``<tracefs>/events/<system>/<name>/format`` (cached per event)."""
    path = os.path.join(_event_dir(system, name, root), "format")
    try:
        with open(path) as format_file:
            text = format_file.read()
    except FileNotFoundError:
        hint = (
            "kernel built without CONFIG_FTRACE_SYSCALLS?"
            if system == "syscalls"
            else "kernel too old or CONFIG missing?"
        )
        raise TracefsError(
            f"tracepoint {system}:{name} not found in {os.path.join(_events_of(path))} ({hint})"
        ) from None
    except OSError as exc:
        raise TracefsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        parsed = parse_format(text, system=system)
    except TracefsError as exc:
        raise TracefsError(f"{path}: {exc}") from None
    return EventFormat(system=system, name=name, id=parsed.id, fields=parsed.fields)


def available(system: str, name: str, root: PathLike | None = None) -> bool:
    """Whether the tracepoint exists. A missing or unmountable tracefs still raises TracefsError,
    so the caller reports that rather than a misleading "event not available"."""
    return os.path.isfile(os.path.join(_event_dir(system, name, root), "format"))
