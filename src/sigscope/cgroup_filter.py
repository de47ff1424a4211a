"""--cgroup PATH and --container ID, resolved to what the kernel filter compares: (cgroup v2 id,
level) pairs (model/filters.py ``Filters.cgroups``).

The id is the cgroup directory's kernfs node id (``containers.cgroup_id_of``: what
``bpf_get_current_cgroup_id()`` and ``cgroup->kn->id`` report). The level is the cgroup's depth
in the hierarchy, 0 for its root (``struct cgroup`` ``level``, include/linux/cgroup-defs.h;
``bpf_get_current_ancestor_cgroup_id`` counts the same way): the depth of the path below the
mount point plus that of the mount's own root (mountinfo field 4: a subtree mounted on its own).
The hierarchy's root mounted anywhere is level 0 (``_root_depth``); a subtree mounted inside
a cgroup namespace gives no depth (its ``/`` is deeper than the kernel's root, by an amount
this process cannot see): there run sigscope in the host's cgroup namespace
(``nsenter --cgroup=/proc/1/ns/cgroup``).

Errors: a path that names no cgroup v2 directory, or a prefix no container matches, raise
``CgroupFilterError`` (a UsageError: exit 2); no cgroup v2 hierarchy at all raises
``CgroupUnavailableError`` (a SetupError: exit 3, the system cannot).
"""

from __future__ import annotations

import os
import re

from sigscope.containers import CgroupMount, CgroupResolver, cgroup2_mount, cgroup_id_of
from sigscope.errors import SetupError, UsageError
from sigscope.model.escape import printable as escape

CONTAINER_ID = re.compile(r"[0-9a-f]{1,64}")


class CgroupFilterError(UsageError):
    """A --cgroup path or --container prefix that names no cgroup (one line)."""


class CgroupUnavailableError(SetupError):
    """No cgroup v2 hierarchy to filter on (a cgroup v1-only host; one line)."""


def _mount(mount: CgroupMount | None) -> CgroupMount:
    if mount is None:
        raise CgroupUnavailableError("no cgroup v2 hierarchy is mounted (cgroup v1 only?): "
                                     "--cgroup and --container need one")
    return mount


def _root_depth(mount: CgroupMount) -> int:
    """The level of the cgroup mounted at the mount point. The hierarchy's root is the one
    cgroup without a cgroup.type file (Documentation/admin-guide/cgroup-v2.rst: it "exists
    on non-root cgroups"): level 0 whatever mountinfo calls it. Any other is a subtree whose
    depth is its mountinfo root's, which is only the kernel's level outside a cgroup
    namespace: '/..' (the mount reaches outside this process's namespace) or '/' (the
    namespace's root, not the hierarchy's) cannot be counted."""
    if not os.path.exists(os.path.join(mount.mount_point, "cgroup.type")):
        return 0
    parts = [part for part in mount.root.split("/") if part]
    if not parts or ".." in parts:
        raise CgroupUnavailableError(
            f"the cgroup v2 mount at {escape(mount.mount_point)} is not the hierarchy's root "
            f"and shows {escape(mount.root)} of a cgroup namespace: the cgroups' depth is "
            "unknown here (run in the host's cgroup namespace)")
    return len(parts)


def relative_path(path: str, mount: CgroupMount) -> str:
    """``path`` as a path below the hierarchy's root (``/system.slice/x.scope``): a
    filesystem path under the mount point loses that prefix; anything else is taken as
    relative to the hierarchy. Raises CgroupFilterError for an empty path or '..' components."""
    if not path.strip():
        raise CgroupFilterError("cgroups= '': an empty cgroup path (the hierarchy's root is '/')")
    point = mount.mount_point.rstrip("/")
    absolute = path.rstrip("/") or "/"
    if absolute == point:
        absolute = "/"
    elif absolute.startswith(point + "/"):
        absolute = absolute[len(point):]
    parts = [part for part in absolute.split("/") if part and part != "."]
    if ".." in parts:
        raise CgroupFilterError(f"cgroups= {escape(path)}: '..' in a cgroup path")
    return "/" + "/".join(parts)


def of_path(path: str, mount: CgroupMount | None | str = "auto") -> tuple[int, int]:
    """(id, level) of the cgroup v2 directory ``path`` (below the hierarchy's root, or a
    filesystem path under its mount point). Raises CgroupFilterError (no such cgroup v2
    directory) or CgroupUnavailableError (no cgroup v2 hierarchy)."""
    found = _mount(cgroup2_mount() if mount == "auto" else
                   (mount if isinstance(mount, CgroupMount) else None))
    root = _root_depth(found)
    relative = relative_path(path, found)
    directory = found.mount_point.rstrip("/") + (relative if relative != "/" else "") or "/"
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CgroupFilterError(f"cgroups= {escape(path)}: not a cgroup directory")
    if not os.path.isfile(os.path.join(directory, "cgroup.procs")):
        raise CgroupFilterError(f"cgroups= {escape(path)}: no such cgroup in the cgroup v2 "
                                f"hierarchy at {escape(found.mount_point)}")
    try:
        cgroup_id = cgroup_id_of(directory)
    except (OSError, ValueError) as err:
        raise CgroupFilterError(f"cgroups= {escape(path)}: {escape(str(err))}") from None
    depth = len([part for part in relative.split("/") if part])
    return cgroup_id, root + depth


def of_container(prefix: str, resolver: CgroupResolver | None = None) -> list[tuple[int, int]]:
    """(id, level) of every cgroup whose container id (model/container.py's runtime
    patterns) starts with ``prefix`` (lowercase hex), as the hierarchy is now
    (``CgroupResolver.ids_of_container``). Raises CgroupFilterError (a bad prefix, or no
    container matches) or CgroupUnavailableError."""
    if not CONTAINER_ID.fullmatch(prefix):
        raise CgroupFilterError(f"containers= {escape(prefix)}: a container id prefix is 1 to "
                                "64 lowercase hex digits")
    own = resolver is None
    resolver = resolver or CgroupResolver(warn=None)
    try:
        mount = _mount(resolver.mount)
        found = resolver.ids_of_container(prefix)
    finally:
        if own:
            resolver.close()
    if not found:
        raise CgroupFilterError(f"containers= {prefix}: no running container's id starts "
                                "with it")
    root = _root_depth(mount)
    paths = {ctx.cgroup_path.rstrip("/") for ctx in found.values()}
    pairs = []
    for cgroup_id, ctx in found.items():
        path = ctx.cgroup_path.rstrip("/")
        if any(path.startswith(other + "/") for other in paths):
            continue  # below another of the container's cgroups: matched through that one
        pairs.append((cgroup_id, root + len([part for part in path.split("/") if part])))
    return sorted(pairs)
