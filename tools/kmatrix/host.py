"""Host-side plumbing: the cache directory, running commands, installing missing tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

CACHE_ENV = "SIGSCOPE_KMATRIX_CACHE"
DEFAULT_CACHE = "/var/cache/sigscope-kmatrix"


def cache_dir() -> Path:
    """Where every download and build lives; a second run downloads nothing."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def log(message: str) -> None:
    print(f"kernel-matrix: {message}", file=sys.stderr, flush=True)


class ToolError(RuntimeError):
    """A failure of the tool itself (not of the command run in a guest)."""


def run(argv: Sequence[str], *, quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run argv, raising ToolError (with its output) when it fails."""
    if quiet:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
    done = subprocess.run(list(argv), text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stdout or "")[-3000:] if quiet else ""
        raise ToolError(f"{' '.join(map(str, argv))} exited {done.returncode}\n{tail}")
    return done


# Debian package providing each program the tool runs.
PROVIDERS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "busybox": "busybox-static",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "xz": "xz-utils",
    "zstd": "zstd",
    "gzip": "gzip",
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
}
_apt_updated = False
_apt_lock = threading.Lock()


def ensure_programs(programs: Iterable[str]) -> None:
    """apt-get install the packages of the programs that are not on PATH (once per run).
    Serialised: guests booted at once must not run apt-get side by side (dpkg's lock)."""
    programs = list(programs)
    with _apt_lock:
        _ensure_programs(programs)


def _ensure_programs(programs: list[str]) -> None:
    global _apt_updated
    missing = sorted({PROVIDERS[p] for p in programs if shutil.which(p) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ToolError(f"need root to install {' '.join(missing)}")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run(["apt-get", "update", "-qq"], quiet=True, env=env)
        _apt_updated = True
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        quiet=True, env=env)


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        data = data.encode()
    tmp.write_bytes(data)
    os.replace(tmp, path)
