"""Fetching and unpacking the matrix's kernels (and the arm64 busybox) into the cache."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .debian import PrivateApt, newest_match, read_json, unpack
from .host import ToolError, atomic_write, cache_dir, ensure_programs
from .initramfs import is_static_busybox
from .table import Kernel


@dataclass(frozen=True)
class Fetched:
    package: str
    image: Path  # vmlinuz (x86_64: bzImage; arm64: already an uncompressed Image)
    moddir: Path  # .../lib/modules/<version>

    @property
    def release(self) -> str:
        return self.moddir.name


def kernel_dir(kernel: Kernel) -> Path:
    return cache_dir() / "kernels" / kernel.slug


def apt_for(debian_arch: str) -> PrivateApt:
    return PrivateApt(cache_dir() / "apt" / debian_arch, debian_arch)


def cached(kernel: Kernel) -> Fetched | None:
    meta = read_json(kernel_dir(kernel) / "kernel.json")
    if not meta:
        return None
    got = Fetched(meta["package"], Path(meta["image"]), Path(meta["moddir"]))
    return got if got.image.exists() and got.moddir.is_dir() else None


def fetch(kernel: Kernel, refresh: bool = False) -> Fetched:
    """The newest package matching the kernel's pattern, downloaded and unpacked once."""
    got = cached(kernel)
    if got and not refresh:
        return got
    apt = apt_for(kernel.debian_arch)
    if refresh:
        apt.update(force=True)
    package = newest_match(apt.package_names("linux-image-"), kernel.package)
    if package is None:
        raise ToolError(f"{kernel.name}: no package matches {kernel.package}")
    if got and got.package == package:
        return got
    deb = apt.download(package, cache_dir() / "deb" / kernel.debian_arch)
    tree = kernel_dir(kernel) / "tree"
    unpack(deb, tree)
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    moddirs = sorted(d for base in ("lib/modules", "usr/lib/modules")
                     for d in (tree / base).glob("*") if d.is_dir())
    if not images or not moddirs:
        raise ToolError(f"{deb}: no boot/vmlinuz-* or lib/modules/* inside")
    got = Fetched(package, images[0], moddirs[0])
    atomic_write(kernel_dir(kernel) / "kernel.json", json.dumps(
        {"package": package, "deb": deb.name, "image": str(got.image),
         "moddir": str(got.moddir)}, indent=1) + "\n")
    return got


def busybox(arch: str) -> Path:
    """A static busybox for the guest's architecture."""
    if arch == "x86_64":
        ensure_programs(["busybox"])
        path = Path(shutil.which("busybox") or "/bin/busybox").resolve()
        if not is_static_busybox(path):
            raise ToolError(f"{path} is not static: apt-get install busybox-static")
        return path
    dest = cache_dir() / "arm64" / "busybox"
    path = dest / "bin" / "busybox"
    if not path.exists():
        deb = apt_for("arm64").download("busybox-static/bookworm", cache_dir() / "deb" / "arm64")
        unpack(deb, dest)
    if not is_static_busybox(path):
        raise ToolError(f"{path} is not a static busybox")
    return path
