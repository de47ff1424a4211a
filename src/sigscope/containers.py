"""From a cgroup v2 id to container context: the cgroup's path, the container and pod it names
(``model/container.py``), and names for them from local files, without a Kubernetes API server.

The id is what the kernel programs read at the event: ``bpf_get_current_cgroup_id()`` for the
sender, ``task->cgroups->dfl_cgrp->kn->id`` for the recipient. Both are the cgroup's kernfs node
id (``include/linux/kernfs.h``: "64bit unique ID. On 64bit ino setups, id is the ino"), which is

- the directory's inode number on a 64-bit ``ino_t`` (``kernfs_id_ino()``; what ``stat`` and
  ``getdents`` report: ``fs/kernfs/inode.c`` ``kernfs_get_inode``, ``fs/kernfs/dir.c``
  ``kernfs_fop_readdir``), and
- the 8 bytes of the directory's file handle, type ``FILEID_KERNFS`` (0xfe), on any ``ino_t``
  (``fs/kernfs/mount.c`` ``kernfs_encode_fh``; name_to_handle_at(2)), which
  open_by_handle_at(2) turns back into the directory (needs CAP_DAC_READ_SEARCH).

``CgroupResolver.path(id)`` asks, in order: its cache; the kernel, by opening the handle (one
exact answer, where permitted; an id the kernel does not know is then unknown); where handles
are refused, a rescan of the hierarchy (directory entries carry the ids), at most once per
``rescan_interval`` and over at most ``max_scan`` directories. A cgroup seen once stays
resolvable from the cache after it is removed (a container that exited): call ``rescan()``
when tracing starts so that the cgroups of that moment are known even if they go before their
first event is read. An id no source knows is None, never a guess. Not thread-safe: one
resolver per reading thread.

Paths and names are strings other processes chose: escape them (``model/escape.py``) before
they reach a terminal.

cgroup v1-only hosts have no v2 hierarchy: ``cgroup2_mount()`` is None, the resolver reports
itself unavailable (``available``, ``unavailable_reason``) and says so once through ``warn``;
every lookup then returns None and the caller goes on.

Names (``LocalNames``), best effort, cached, absent when the source is absent:

- ``/var/log/pods/<namespace>_<pod name>_<pod uid>/<container name>/``: the kubelet's log
  directories give a pod UID's namespace, pod name and container names;
- ``/var/log/containers/<pod name>_<namespace>_<container name>-<container id>.log``: the
  kubelet's symlinks give a container id's name, pod and namespace;
- ``/var/lib/docker/containers/<id>/config.v2.json``: docker's ``"Name"`` (``/name``);
- ``/var/lib/containers/storage/<driver>-containers/containers.json``: the containers/storage
  records of podman and CRI-O (``"id"``, ``"names"``); a CRI-O name
  ``k8s_<container>_<pod>_<namespace>_<pod uid>_<attempt>`` gives the pod and namespace too.

A process's pid in its own pid namespace is a kernel fact the programs read at the event;
``proc_nspid_fallback()`` is a /proc reader of the ``NSpid`` line for the tests and for a caller
that labels it as a fallback.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import json
import os
import re
import struct
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from sigscope.model.container import ContainerContext, parse_cgroup_path

MOUNTINFO = "/proc/self/mountinfo"
# include/linux/exportfs.h: enum fid_type
FILEID_KERNFS = 0xFE
# fcntl.h
AT_FDCWD = -100
O_PATH = 0o10000000
UNAVAILABLE = "container context is unavailable"


class CgroupMount(NamedTuple):
    """A cgroup2 mount: ``mount_point`` (a path in this mount namespace) and ``root``, the
    directory of the hierarchy mounted there (mountinfo field 4: ``/`` normally, another path
    under a cgroup namespace or a bind mount of a subtree)."""

    mount_point: str
    root: str


def _unescape(field: str) -> str:
    # proc(5): mountinfo escapes space, tab, newline and backslash as \ooo octal
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """Every cgroup2 mount in a /proc/<pid>/mountinfo text (proc(5): fields 4 and 5 are the
    mount's root and mount point, the filesystem type follows the ``-`` separator)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
            mounts.append(CgroupMount(_unescape(fields[4]), _unescape(fields[3])))
    return mounts


def _reach(root: str) -> tuple[int, int]:
    """How much of the hierarchy a mount of ``root`` shows, as a sort key (smaller: more).
    mountinfo gives a cgroup2 mount's root relative to the reader's cgroup namespace
    (``kernel/cgroup/cgroup.c`` ``cgroup_show_path``): ``/`` is the namespace's root, ``/..``
    its parent (a host's hierarchy mounted into a container: it sees more), ``/a/b`` a subtree
    (it sees less)."""
    parts = [part for part in root.split("/") if part]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return (-ups, len(parts) - ups)


def choose_mount(mounts: list[CgroupMount]) -> CgroupMount | None:
    """The mount to read: the one that shows most of the hierarchy (``_reach``: in a container
    with its own cgroup namespace, a mount of the host's hierarchy over the container's own
    ``/sys/fs/cgroup``); among equals ``/sys/fs/cgroup`` (pure v2), then
    ``/sys/fs/cgroup/unified`` (hybrid), then the first listed."""
    if not mounts:
        return None
    order = {"/sys/fs/cgroup": 0, "/sys/fs/cgroup/unified": 1}
    return min(mounts, key=lambda m: (_reach(m.root), order.get(m.mount_point, 2)))


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> CgroupMount | None:
    """This process's cgroup v2 mount (``choose_mount`` of ``parse_mountinfo``), or None when
    there is none (a cgroup v1-only host) or mountinfo cannot be read."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return choose_mount(parse_mountinfo(f.read()))
    except OSError:
        return None


# --- file handles -----------------------------------------------------------------------------

class _FileHandle(ctypes.Structure):
    # fcntl.h: struct file_handle; a kernfs handle is 8 bytes (room for MAX_HANDLE_SZ not needed)
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def cgroup_id_of(path: str) -> int:
    """The cgroup id of the cgroup v2 directory ``path``: its file handle (name_to_handle_at(2),
    type FILEID_KERNFS, 8 bytes: the kernfs node id, as the BPF helpers report it). Raises
    OSError (ENOENT, ENOTDIR, EOPNOTSUPP on a filesystem without handles; ENOSYS or a
    ValueError naming the handle type where the handle is not a kernfs one)."""
    libc = _c_library()
    handle = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    name_to_handle_at = getattr(libc, "name_to_handle_at", None)
    if name_to_handle_at is None:
        raise OSError(errno.ENOSYS, "name_to_handle_at: not in the C library")
    if name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(handle),
                         ctypes.byref(mount_id), 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"name_to_handle_at {path}: {os.strerror(code)}")
    if handle.handle_type != FILEID_KERNFS or handle.handle_bytes != 8:
        raise ValueError(f"{path}: not a kernfs handle (type {handle.handle_type:#x}, "
                         f"{handle.handle_bytes} bytes)")
    return int(struct.unpack_from("=Q", bytes(handle.f_handle[:8]))[0])


def _open_by_id(mount_fd: int, cgroup_id: int) -> int:
    """An O_PATH fd of the cgroup directory with this id (open_by_handle_at(2)); raises OSError
    (ESTALE: no such cgroup now; EPERM without CAP_DAC_READ_SEARCH)."""
    libc = _c_library()
    open_by_handle_at = getattr(libc, "open_by_handle_at", None)
    if open_by_handle_at is None:
        raise OSError(errno.ENOSYS, "open_by_handle_at: not in the C library")
    handle = _FileHandle(handle_bytes=8, handle_type=FILEID_KERNFS)
    struct.pack_into("=Q", handle.f_handle, 0, cgroup_id)
    fd = int(open_by_handle_at(mount_fd, ctypes.byref(handle), O_PATH | os.O_CLOEXEC))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"open_by_handle_at: {os.strerror(code)}")
    return fd


# --- the resolver -----------------------------------------------------------------------------

def _default_warn(message: str) -> None:
    print(f"sigscope: {message}", file=sys.stderr)


class CgroupResolver:
    """cgroup v2 id -> path and ContainerContext (see the module docstring for the sources).

    ``mount``: the hierarchy to read (default ``cgroup2_mount()``; None: unavailable).
    ``rescan_interval``: seconds between two rescans on a miss. ``max_scan``: directories one
    rescan visits at most. ``max_cached``: ids kept (least recently used dropped first).
    ``use_handles``: try open_by_handle_at(2) on a miss (turned off at its first EPERM, ENOSYS
    or EOPNOTSUPP). ``warn``: called once, with one line, when the context is unavailable.
    ``clock``: monotonic seconds (tests). Paths are relative to the hierarchy's root as mounted
    (``/`` is the mount point; under a cgroup namespace, the namespace's root).
    """

    def __init__(self, mount: CgroupMount | None | str = "auto", *, rescan_interval: float = 1.0,
                 max_scan: int = 100_000, max_cached: int = 65_536, use_handles: bool = True,
                 warn: Callable[[str], None] | None = _default_warn,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(mount, str) and mount != "auto":
            raise ValueError(f"mount: a CgroupMount, None or 'auto', not {mount!r}")
        self.mount: CgroupMount | None = cgroup2_mount() if mount == "auto" else (
            mount if isinstance(mount, CgroupMount) else None)
        self.rescan_interval = rescan_interval
        self.max_scan = max_scan
        self.max_cached = max_cached
        self.use_handles = use_handles
        self._clock = clock
        self._paths: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._contexts: dict[str, ContainerContext] = {}
        self._last_scan: float | None = None
        self._mount_fd: int | None = None
        self.scans = 0           # rescans done (tests, statistics)
        self.scan_truncated = False
        self.unavailable_reason: str | None = None
        self._warn = warn
        self._warned = False
        if self.mount is None:
            self.unavailable_reason = ("no cgroup v2 hierarchy is mounted (cgroup v1 only?): "
                                       + UNAVAILABLE)

    @property
    def available(self) -> bool:
        return self.mount is not None

    def warn_if_unavailable(self) -> bool:
        """Say once (through ``warn``) that container context is unavailable; True if it is."""
        if self.unavailable_reason is None:
            return False
        if not self._warned and self._warn is not None:
            self._warned = True
            self._warn(self.unavailable_reason)
        return True

    def close(self) -> None:
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None

    def __enter__(self) -> CgroupResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remember(self, cgroup_id: int, path: str) -> None:
        self._paths[cgroup_id] = path
        self._paths.move_to_end(cgroup_id)
        while len(self._paths) > self.max_cached:
            self._paths.popitem(last=False)

    def _relative(self, absolute: str) -> str | None:
        assert self.mount is not None
        point = self.mount.mount_point.rstrip("/")
        if absolute == point:
            return "/"
        if absolute.startswith(point + "/"):
            return absolute[len(point):]
        return None

    def _by_handle(self, cgroup_id: int) -> str | None:
        assert self.mount is not None
        try:
            if self._mount_fd is None:
                self._mount_fd = os.open(self.mount.mount_point,
                                         os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = _open_by_id(self._mount_fd, cgroup_id)
        except OSError as err:
            if err.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP,
                             errno.ENOTDIR, errno.ENOENT):
                self.use_handles = False  # not permitted or not possible here: stop asking
            return None  # ESTALE/EINVAL/...: no such cgroup (now)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            self.use_handles = False  # no /proc to name the fd: rescans, then
            return None
        finally:
            os.close(fd)
        if target.endswith(" (deleted)"):
            return None  # removed meanwhile: d_path no longer names a live directory
        # A cgroup outside the mounted subtree (cgroup namespace) is not under the mount point.
        return self._relative(target)

    def rescan(self) -> int:
        """Walk the hierarchy now (at most ``max_scan`` directories, depth first) and cache
        every directory's id (its d_ino) and path. Returns the directories seen; 0 when
        unavailable. ``scan_truncated`` says whether the bound cut it short."""
        if self.mount is None:
            return 0
        self._last_scan = self._clock()
        self.scans += 1
        point = self.mount.mount_point.rstrip("/") or "/"
        seen = 0
        try:
            root_id = os.stat(point).st_ino
        except OSError:
            return 0
        self._remember(root_id, "/")
        stack = [(point, "")]
        self.scan_truncated = False
        while stack:
            directory, relative = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        if seen >= self.max_scan:
                            self.scan_truncated = True
                            return seen
                        seen += 1
                        path = f"{relative}/{entry.name}"
                        self._remember(entry.inode(), path)
                        stack.append((entry.path, path))
            except OSError:
                continue  # removed while walking
        return seen

    def path(self, cgroup_id: int) -> str | None:
        """The path (``/system.slice/docker-<id>.scope``; ``/`` for the root) of the cgroup
        with this id, or None when no source knows it (or the context is unavailable)."""
        if self.mount is None:
            return None
        path = self._paths.get(cgroup_id)
        if path is not None:
            self._paths.move_to_end(cgroup_id)
            return path
        if self.use_handles:
            path = self._by_handle(cgroup_id)
            if path is not None:
                self._remember(cgroup_id, path)
                return path
            if self.use_handles:
                # The kernel has no such cgroup now (or not under our mount): a rescan would
                # not find it either.
                return None
        now = self._clock()
        if self._last_scan is None or now - self._last_scan >= self.rescan_interval:
            self.rescan()
            return self._paths.get(cgroup_id)
        return None

    def id_of(self, path: str) -> int:
        """The id of the cgroup at ``path`` (relative to the hierarchy's root, as ``path()``
        returns it), from its file handle (``cgroup_id_of``), cached. Raises OSError (ENOENT:
        no such cgroup; ENODEV: no cgroup v2 hierarchy)."""
        if self.mount is None:
            raise OSError(errno.ENODEV, f"{path}: no cgroup v2 hierarchy is mounted")
        relative = "/" + "/".join(part for part in path.split("/") if part)
        if ".." in relative.split("/"):
            raise OSError(errno.EINVAL, f"{path}: '..' in a cgroup path")
        directory = self.mount.mount_point.rstrip("/") + (relative if relative != "/" else "")
        cgroup_id = cgroup_id_of(directory or "/")
        self._remember(cgroup_id, relative)
        return cgroup_id

    def ids_of_container(self, prefix: str) -> dict[int, ContainerContext]:
        """Every cgroup (id -> context) whose container id starts with ``prefix`` (lowercase
        hex), after a rescan now: the cgroups of the containers running at this moment and any
        cached from before. Empty when unavailable or for an empty prefix."""
        if self.mount is None or not prefix:
            return {}
        self.rescan()
        found = {}
        for cgroup_id in list(self._paths):
            context = self.context(cgroup_id)
            if context is not None and (context.container_id or "").startswith(prefix):
                found[cgroup_id] = context
        return found

    def context(self, cgroup_id: int) -> ContainerContext | None:
        """The ContainerContext of the cgroup with this id (``parse_cgroup_path`` of its path,
        memoised per path), or None when the path is unknown."""
        path = self.path(cgroup_id)
        if path is None:
            return None
        context = self._contexts.get(path)
        if context is None:
            if len(self._contexts) >= self.max_cached:
                self._contexts.clear()
            context = self._contexts[path] = parse_cgroup_path(path)
        return context


# --- names from local files -------------------------------------------------------------------

class PodNames(NamedTuple):
    """A pod's ``namespace`` and ``name`` and its ``containers``' names (sorted), from the
    kubelet's /var/log/pods directory of that pod UID."""

    namespace: str
    name: str
    containers: tuple[str, ...]


class ContainerNames(NamedTuple):
    """A container's ``name`` and, from the kubelet's logs, its ``pod`` and ``namespace`` (None
    for a docker container outside Kubernetes). ``source``: the file that said so."""

    name: str
    pod: str | None
    namespace: str | None
    source: str


_POD_LOG_DIR = re.compile(r"^(?P<ns>[^_/]+)_(?P<pod>[^_/]+)_(?P<uid>[0-9a-f-]{32,36})$")
_CONTAINER_LOG = re.compile(
    r"^(?P<pod>[^_/]+)_(?P<ns>[^_/]+)_(?P<name>[^/]+)-(?P<id>[0-9a-f]{64})\.log$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# CRI-O's (and dockershim's) container names: k8s_<container>_<pod>_<namespace>_<uid>_<attempt>
_K8S_NAME = re.compile(r"^k8s_(?P<name>[^_]+)_(?P<pod>[^_]+)_(?P<ns>[^_]+)_[^_]+_\d+$")


def _storage_names(path: str) -> dict[str, ContainerNames]:
    """id -> names from a containers/storage containers.json (a JSON list of records with
    "id" and "names"); {} when unreadable or not of that shape."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, ValueError):
        return {}
    found: dict[str, ContainerNames] = {}
    if not isinstance(records, list):
        return found
    for record in records:
        if not isinstance(record, dict):
            continue
        cid, names = record.get("id"), record.get("names")
        if not (isinstance(cid, str) and _HEX64.match(cid) and isinstance(names, list)
                and names and isinstance(names[0], str)):
            continue
        match = _K8S_NAME.match(names[0])
        if match:
            found[cid] = ContainerNames(match["name"], match["pod"], match["ns"], path)
        else:
            found[cid] = ContainerNames(names[0], None, None, path)
    return found


class LocalNames:
    """Names for pod UIDs and container ids from local files (module docstring), cached.
    ``root``: the directory the paths are under (``/``; a host root mounted elsewhere in a
    container). ``refresh_interval``: seconds between two re-reads of the kubelet directories
    on a miss. Every lookup returns None when its source is absent or says nothing."""

    def __init__(self, root: str = "/", refresh_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._pods: dict[str, PodNames] = {}
        self._containers: dict[str, ContainerNames] = {}
        self._docker: dict[str, ContainerNames] = {}
        self._docker_missing: dict[str, float] = {}  # id -> when its config was not there
        self._last_read: float | None = None

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def refresh(self) -> None:
        """Re-read the kubelet's directories and containers/storage's containers.json
        (entries seen before are kept)."""
        self._last_read = self._clock()
        pods_dir = self._path("var", "log", "pods")
        try:
            pod_dirs = os.listdir(pods_dir)
        except OSError:
            pod_dirs = []
        for entry in pod_dirs:
            match = _POD_LOG_DIR.match(entry)
            if not match:
                continue
            try:
                containers = tuple(sorted(
                    c for c in os.listdir(os.path.join(pods_dir, entry))
                    if os.path.isdir(os.path.join(pods_dir, entry, c))))
            except OSError:
                containers = ()
            self._pods[match["uid"]] = PodNames(match["ns"], match["pod"], containers)
        logs_dir = self._path("var", "log", "containers")
        try:
            logs = os.listdir(logs_dir)
        except OSError:
            logs = []
        storage = self._path("var", "lib", "containers", "storage")
        try:
            drivers = [e for e in os.listdir(storage) if e.endswith("-containers")]
        except OSError:
            drivers = []
        for driver in drivers:
            self._containers.update(
                _storage_names(os.path.join(storage, driver, "containers.json")))
        for entry in logs:  # the kubelet's names last: they win
            match = _CONTAINER_LOG.match(entry)
            if match:
                self._containers[match["id"]] = ContainerNames(
                    match["name"], match["pod"], match["ns"], os.path.join(logs_dir, entry))

    def _stale(self) -> bool:
        return (self._last_read is None
                or self._clock() - self._last_read >= self.refresh_interval)

    def pod(self, pod_uid: str) -> PodNames | None:
        """The names of the pod with this UID (dashed, or 32 hex for a static pod), or None."""
        names = self._pods.get(pod_uid)
        if names is None and self._stale():
            self.refresh()
            names = self._pods.get(pod_uid)
        return names

    def container(self, container_id: str) -> ContainerNames | None:
        """The name of the container with this id (64 hex): the kubelet's log symlinks first,
        then containers/storage, then docker's config.v2.json; None when none knows it."""
        names = self._containers.get(container_id)
        if names is None and self._stale():
            self.refresh()
            names = self._containers.get(container_id)
        if names is None:
            names = self._docker_name(container_id)
        return names

    def _docker_name(self, container_id: str) -> ContainerNames | None:
        if container_id in self._docker:
            return self._docker[container_id]
        if not _HEX64.match(container_id):
            return None
        missing_since = self._docker_missing.get(container_id)
        if missing_since is not None and self._clock() - missing_since < self.refresh_interval:
            return None
        config = self._path("var", "lib", "docker", "containers", container_id, "config.v2.json")
        names: ContainerNames | None = None
        try:
            with open(config, encoding="utf-8") as f:
                name = json.load(f).get("Name")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name.strip("/"):
            names = ContainerNames(name.lstrip("/"), None, None, config)
            self._docker[container_id] = names
        else:
            # asked again after refresh_interval: the container may be created meanwhile
            if len(self._docker_missing) >= 65_536:
                self._docker_missing.clear()
            self._docker_missing[container_id] = self._clock()
        return names


# --- the namespace-local pid: a /proc fallback ------------------------------------------------

def proc_cgroup_fallback(pid: int, proc: str = "/proc") -> str | None:
    """FALLBACK, not a kernel fact at the event: the cgroup v2 path of ``pid`` now, from the
    ``0::`` line of /proc/<pid>/cgroup (cgroups(7); relative to the reader's cgroup namespace
    root). None when unreadable or when the line is missing (a v1-only host)."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def parse_nspid(status: str) -> tuple[int, ...] | None:
    """The ``NSpid:`` line of a /proc/<pid>/status text (proc(5), Linux 4.1): the pid in each
    pid namespace the process is in, outermost first; None when the line is missing."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return tuple(int(field) for field in line.split()[1:])
    return None


def proc_nspid_fallback(pid: int, proc: str = "/proc") -> tuple[int, ...] | None:
    """FALLBACK, not a kernel fact at the event: ``parse_nspid`` of /proc/<pid>/status read
    now (the process may have exited, or its pid been reused). None when unreadable. The pid in
    a process's own namespace is the last element."""
    try:
        with open(f"{proc}/{pid}/status", encoding="utf-8", errors="replace") as f:
            return parse_nspid(f.read())
    except OSError:
        return None


# --- everything for one id -----------------------------------------------------------------

def describe(resolver: CgroupResolver, cgroup_id: int,
             names: LocalNames | None = None) -> dict[str, object] | None:
    """One cgroup id's context as a flat dict (JSON output): ``cgroup_id`` and the
    ContainerContext fields, then from ``names`` (when given) ``container_name``, ``pod_name``
    and ``pod_namespace``, None where no local source says. None when the id is unknown."""
    context = resolver.context(cgroup_id)
    if context is None:
        return None
    found: dict[str, object] = {"cgroup_id": cgroup_id, **context.to_dict(),
                                "container_name": None, "pod_name": None,
                                "pod_namespace": None}
    if names is None:
        return found
    if context.container_id is not None:
        container = names.container(context.container_id)
        if container is not None:
            found.update(container_name=container.name, pod_name=container.pod,
                         pod_namespace=container.namespace)
    if context.pod_uid is not None and found["pod_name"] is None:
        pod = names.pod(context.pod_uid)
        if pod is not None:
            found.update(pod_name=pod.name, pod_namespace=pod.namespace)
    return found


# --- per cgroup id, for the outputs --------------------------------------------------------

def container_label(found: dict[str, object] | None) -> str | None:
    """The short name of a ``describe()`` result, for a text column and a Prometheus label:
    ``<pod namespace>/<pod>/<container>`` where the kubelet names the container, else the
    container's name (docker, podman, CRI-O records), else the first 12 hex digits of its id;
    ``conmon:<12 hex>`` for a conmon cgroup; None outside any container (or when unknown)."""
    if found is None:
        return None
    container_id, name = found.get("container_id"), found.get("container_name")
    if isinstance(container_id, str):
        if isinstance(name, str):
            pod, namespace = found.get("pod_name"), found.get("pod_namespace")
            if isinstance(pod, str) and isinstance(namespace, str):
                return f"{namespace}/{pod}/{name}"
            return name
        return container_id[:12]
    monitor = found.get("monitor_of")
    if isinstance(monitor, str):
        return f"conmon:{monitor[:12]}"
    return None


class ContainerLookup:
    """cgroup id -> ``describe()`` dict (None: unknown), memoised per id: what the outputs and
    ``Event.sender_container``/``target_container`` call.

    ``resolver``/``names`` default to a ``CgroupResolver()`` (its ``warn`` says once, on
    ``start()``, that context is unavailable on a cgroup v1-only host) and
    ``LocalNames(host_root)`` (``host_root``: where the host's /var is seen, e.g. ``/host`` in
    a DaemonSet; the cgroup hierarchy is found in mountinfo wherever it is mounted).
    An answer is kept for good once its names are known (or it is in no container); one still
    missing a container's or pod's name, or an unknown id, is asked again after
    ``retry_interval`` seconds (the sources are rate-limited themselves). ``label(id)`` is
    ``container_label`` of the answer. Not thread-safe (one per reading thread)."""

    def __init__(self, resolver: CgroupResolver | None = None, names: LocalNames | None = None,
                 *, host_root: str = "/", retry_interval: float = 5.0,
                 max_cached: int = 65_536, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver if resolver is not None else CgroupResolver()
        self.names = names if names is not None else LocalNames(host_root)
        self.retry_interval = retry_interval
        self.max_cached = max_cached
        self._clock = clock
        self._found: dict[int, tuple[dict[str, object] | None, float | None]] = {}

    @property
    def available(self) -> bool:
        return self.resolver.available

    def start(self) -> None:
        """Say once if context is unavailable, else scan the hierarchy now (so the cgroups of
        this moment stay known when they are removed before their first event is read)."""
        if not self.resolver.warn_if_unavailable():
            self.resolver.rescan()

    def close(self) -> None:
        self.resolver.close()

    def __call__(self, cgroup_id: int | None) -> dict[str, object] | None:
        """The ``describe()`` dict of this id (a shared dict: do not change it), or None for
        an unknown id (None, 0, or no source knows it)."""
        if not cgroup_id:
            return None
        hit = self._found.get(cgroup_id)
        if hit is not None:
            found, retry_at = hit
            if retry_at is None or self._clock() < retry_at:
                return found
        found = describe(self.resolver, cgroup_id, self.names)
        complete = found is not None and (
            (found["container_id"] is None or found["container_name"] is not None)
            and (found["pod_uid"] is None or found["pod_name"] is not None))
        if len(self._found) >= self.max_cached:
            self._found.clear()
        self._found[cgroup_id] = (found, None if complete
                                  else self._clock() + self.retry_interval)
        return found

    def label(self, cgroup_id: int | None) -> str | None:
        """``container_label`` of this id's answer."""
        return container_label(self(cgroup_id))

    def pod_uid(self, cgroup_id: int | None) -> str | None:
        """The pod UID of this id's cgroup, or None."""
        found = self(cgroup_id)
        uid = None if found is None else found.get("pod_uid")
        return uid if isinstance(uid, str) else None
