"""Debian packages through a private apt configuration.

The mirror is the one this machine's own apt sources already use for Debian (the URIs ending in
/debian and /debian-security), read at run time; no host name is written in this repository.
The private configuration lives in the cache and never touches the system's apt state.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .host import ToolError, atomic_write, ensure_programs, log, run

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCE_FILES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list",
                "/etc/apt/sources.list.d/*.sources")
_URI = re.compile(r"(?:https?|file)://\S+?/debian(?:-security)?/?(?=\s|$)")
# Suites whose kernels (and, for security fixes, the -security suite) the matrix uses.
SUITES = ("bullseye", "bookworm", "trixie")
SECURITY_SUITES = ("bullseye-security", "bookworm-security")


def parse_mirrors(text: str) -> tuple[str | None, str | None]:
    """(main, security) Debian URIs found in apt source text (one-line or deb822 format)."""
    uris = sorted({m.group(0).rstrip("/") for m in _URI.finditer(text)})
    main = next((u for u in uris if u.endswith("/debian")), None)
    security = next((u for u in uris if u.endswith("/debian-security")), None)
    return main, security


def system_mirrors() -> tuple[str, str | None]:
    text = ""
    for pattern in SOURCE_FILES:
        for name in sorted(glob.glob(pattern)):
            try:
                text += Path(name).read_text(errors="replace") + "\n"
            except OSError:
                pass
    main, security = parse_mirrors(text)
    if main is None:
        raise ToolError("no Debian mirror (a URI ending in /debian) in this machine's apt sources")
    return main, security


def sources_list(arch: str, main: str, security: str | None) -> str:
    lines = [f"deb [arch={arch} signed-by={KEYRING}] {main} {s} main" for s in SUITES]
    if security:
        lines += [f"deb [arch={arch} signed-by={KEYRING}] {security} {s} main"
                  for s in SECURITY_SUITES]
    return "\n".join(lines) + "\n"


@dataclass
class PrivateApt:
    """apt-get/apt-cache with their own sources, lists, cache and (empty) dpkg status."""

    root: Path
    arch: str  # Debian architecture: amd64, arm64

    def options(self) -> list[str]:
        a = self.root
        return [
            f"-oAPT::Architecture={self.arch}", f"-oAPT::Architectures={self.arch}",
            f"-oDir::State::status={a / 'status'}", f"-oDir::Etc::sourcelist={a / 'sources.list'}",
            "-oDir::Etc::sourceparts=/nonexistent", f"-oDir::State::Lists={a / 'lists'}",
            f"-oDir::Cache={a / 'cache'}", "-oDebug::NoLocking=1",
        ]

    def update(self, force: bool = False) -> None:
        lists = self.root / "lists"
        if not force and any(p.name != "partial" and p.name != "lock" for p in
                             (lists.iterdir() if lists.is_dir() else [])):
            return
        ensure_programs(["dpkg-deb"])
        main, security = system_mirrors()
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        atomic_write(self.root / "sources.list", sources_list(self.arch, main, security))
        log(f"apt update ({self.arch}, private lists in {self.root})")
        run(["apt-get", *self.options(), "update", "-qq"], quiet=True)

    def package_names(self, prefix: str) -> list[str]:
        self.update()
        done = run(["apt-cache", *self.options(), "pkgnames", prefix], quiet=True,
                   stderr=subprocess.DEVNULL)
        return done.stdout.split()

    def download(self, spec: str, into: Path) -> Path:
        """apt-get download spec (name or name/suite) into a directory; returns the .deb."""
        self.update()
        into.mkdir(parents=True, exist_ok=True)
        name = spec.split("/")[0]
        before = set(into.glob(f"{name}_*.deb"))
        log(f"downloading {spec} ({self.arch})")
        run(["apt-get", *self.options(), "download", spec], quiet=True, cwd=into)
        new = sorted(set(into.glob(f"{name}_*.deb")) - before) or sorted(into.glob(f"{name}_*.deb"))
        if not new:
            raise ToolError(f"apt-get download {spec} left no .deb in {into}")
        return new[-1]


def version_key(text: str) -> list:
    """Sort key treating digit runs as numbers (6.1.0-9 < 6.1.0-10)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text)]


def newest_match(names: Iterable[str], pattern: str) -> str | None:
    rx = re.compile(pattern)
    matches = [n for n in names if rx.fullmatch(n)]
    return max(matches, key=version_key) if matches else None


def unpack(deb: Path, dest: Path) -> None:
    ensure_programs(["dpkg-deb"])
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(tmp)])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
