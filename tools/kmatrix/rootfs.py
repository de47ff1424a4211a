"""The arm64 guest's userland: Debian bookworm made once with debootstrap and cached.

debootstrap --arch=arm64 --foreign downloads and unpacks; the second stage runs in a chroot under
qemu-user (binfmt_misc with qemu-aarch64, flag F, which binfmt-support registers). About 7 minutes
on a 2-core host, once; the stamp file records the package list, so changing it rebuilds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .debian import read_json, system_mirrors
from .host import ToolError, atomic_write, cache_dir, ensure_programs, log, run

SUITE = "bookworm"
# What tests/kernel need inside the guest: python3 + pytest, prometheus-client (top
# --prometheus test), procps/kmod/iproute2 for looking around. No C compiler: tests/kernel
# compile nothing (the unit test of the benchmark generator does; run unit tests on the host).
PACKAGES = (
    "python3", "python3-venv", "python3-pytest", "python3-prometheus-client", "python3-yaml",
    "procps", "kmod", "iproute2", "file",
)
STAMP = "kmatrix-rootfs.json"


def root_dir() -> Path:
    return cache_dir() / "arm64" / "rootfs"


def is_built(root: Path | None = None) -> bool:
    root = root or root_dir()
    stamp = read_json(root / STAMP)
    return bool(stamp) and stamp.get("packages") == list(PACKAGES)


def _enable_binfmt() -> None:
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"], quiet=True)
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        raise ToolError("binfmt_misc has no qemu-aarch64 entry (qemu-user-static, binfmt-support)")


def build(force: bool = False) -> Path:
    """Build (or reuse) the arm64 userland; returns its directory."""
    root = root_dir()
    if is_built(root) and not force:
        return root
    if os.geteuid() != 0:
        raise ToolError("building the arm64 userland needs root (debootstrap, chroot)")
    ensure_programs(["debootstrap", "qemu-aarch64-static", "update-binfmts"])
    _enable_binfmt()
    main, _ = system_mirrors()
    work = root.with_name("rootfs.partial")
    if work.exists():
        run(["rm", "-rf", "--one-file-system", str(work)])
    work.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the arm64 {SUITE} userland in {root} (once; ~7 min)")
    t0 = time.monotonic()
    run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
         "--include=" + ",".join(PACKAGES), SUITE, str(work), main], quiet=True)
    t1 = time.monotonic()
    # Flag F makes the kernel use the host's interpreter even inside the chroot; a copy in the
    # tree keeps it working where binfmt was registered without F.
    shutil.copy2(shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static",
                 work / "usr/bin" / "qemu-aarch64-static")
    run(["chroot", str(work), "/debootstrap/debootstrap", "--second-stage"], quiet=True)
    t2 = time.monotonic()
    done = run(["chroot", str(work), "/usr/bin/python3", "-c",
                "import platform, sys, pytest, prometheus_client;"
                "print(platform.machine(), sys.version.split()[0], pytest.__version__)"],
               quiet=True, stderr=subprocess.STDOUT)
    (work / "etc" / "hostname").write_text("kmatrix-arm64\n")
    stamp = {"packages": list(PACKAGES), "suite": SUITE, "first_stage_s": round(t1 - t0, 1),
             "second_stage_s": round(t2 - t1, 1), "python": done.stdout.strip(),
             "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(work / STAMP, json.dumps(stamp, indent=1) + "\n")
    if root.exists():
        run(["rm", "-rf", "--one-file-system", str(root)])
    work.rename(root)
    log(f"arm64 userland ready: first stage {t1 - t0:.0f}s, second stage {t2 - t1:.0f}s "
        f"({done.stdout.strip()})")
    return root
