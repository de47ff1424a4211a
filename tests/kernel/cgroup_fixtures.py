"""cgroups made by a test under the cgroup v2 hierarchy, and processes moved into them.

    with made_cgroup("sigscope-test-1/system.slice/docker-<id>.scope") as (path, cgroup_id):
        move(pid, path)   # path: "/sigscope-test-1/system.slice/docker-<id>.scope"

Directories that did not exist are made and, at the end, removed again deepest first (the
test's processes must have exited or moved out by then). Skips when no cgroup v2 hierarchy
is mounted (the kmatrix guests mount one)."""

from __future__ import annotations

import errno
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sigscope.containers import cgroup2_mount, cgroup_id_of


def mount_point() -> Path:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    return Path(mount.mount_point)


def unique_top() -> str:
    """A fresh top-level cgroup name for one test."""
    return f"sigscope-test-{uuid.uuid4().hex[:12]}"


@contextmanager
def made_cgroup(relative: str) -> Iterator[tuple[str, int]]:
    """Make the cgroup at `relative` (below the hierarchy's root) and its missing parents;
    yield (its path as /proc/<pid>/cgroup shows it, its cgroup id); remove what was made."""
    point = mount_point()
    made: list[Path] = []
    group = point
    try:
        for part in relative.strip("/").split("/"):
            group = group / part
            if not group.exists():
                group.mkdir()
                made.append(group)
        yield "/" + relative.strip("/"), cgroup_id_of(str(group))
    finally:
        for directory in reversed(made):
            _rmdir(directory)


def _rmdir(directory: Path) -> None:
    # A process reaped just now may still be leaving the cgroup (EBUSY for a moment): the
    # kernel gives no event to wait for, so retry a bounded number of times.
    for _ in range(200):
        try:
            directory.rmdir()
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    directory.rmdir()


def move(pid: int, path: str) -> None:
    """Move process `pid` (every thread) into the cgroup at `path` (below the root)."""
    (mount_point() / path.lstrip("/") / "cgroup.procs").write_text(str(pid))
