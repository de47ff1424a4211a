"""cgroups made by a test under the cgroup v2 hierarchy, with the names runtimes give them.

``cgroup_at(relative)`` makes ``<mount>/sigscope-test-<hex>/<relative>`` (and the cgroups on
the way) and yields ``(path, id)``: the path relative to the hierarchy's root, as
``/proc/<pid>/cgroup`` and ``CgroupResolver.path()`` give it, and the kernel's cgroup id (the
directory's kernfs handle). Everything made is removed afterwards (the processes moved in must
have left or exited by then). Skips where no cgroup v2 hierarchy is mounted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sigscope.containers import cgroup2_mount, cgroup_id_of


def hierarchy_root() -> Path:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")  # the kmatrix guests mount one
    return Path(mount.mount_point)


@contextmanager
def cgroup_at(relative: str, parent: str | None = None) -> Iterator[tuple[str, int]]:
    """(path, id) of a new cgroup at ``parent``/``relative`` (``parent`` default: a fresh
    ``/sigscope-test-<hex>``), removed with what was made for it on leaving."""
    root = hierarchy_root()
    parent = parent or f"/sigscope-test-{uuid.uuid4().hex[:12]}"
    path = f"{parent.rstrip('/')}/{relative.strip('/')}"
    made: list[Path] = []
    directory = root
    try:
        for part in path.strip("/").split("/"):
            directory = directory / part
            if not directory.exists():
                directory.mkdir()
                made.append(directory)
        yield path, cgroup_id_of(str(directory))
    finally:
        for group in reversed(made):
            group.rmdir()


def move_to(path: str, pid: int) -> None:
    """Move process ``pid`` into the cgroup at ``path`` (its cgroup.procs)."""
    (hierarchy_root() / path.lstrip("/") / "cgroup.procs").write_text(str(pid))
