"""A minimal newc ("070701") cpio writer: enough for an initramfs, no cpio(1) needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

TRAILER = "TRAILER!!!"


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Write entries in newc format; inode numbers are assigned in order, owners are root."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1

    def entry(self, name: str, mode: int, data: bytes = b"", mtime: int = 0) -> None:
        raw = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        self.out.write(header + raw + _pad(len(header) + len(raw)))
        self.out.write(data + _pad(len(data)))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self.entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self.entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self.entry(name, stat.S_IFLNK | 0o777, target.encode())

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add everything under root (directories before their contents, sorted)."""
        for top, dirs, files in os.walk(root):
            dirs.sort()
            rel_top = os.path.relpath(top, root)
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(top, name)
                rel = os.path.normpath(os.path.join(prefix, rel_top, name))
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(rel, os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    self.directory(rel, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.file(rel, Path(full).read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self.entry(TRAILER, 0)


def parse_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry, trailer excluded; the inverse of CpioWriter (for tests)."""
    entries, pos = [], 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + _pad_len(110 + namesize)
        body = data[pos:pos + size]
        pos += size + _pad_len(size)
        if name == TRAILER:
            return entries
        entries.append((name, mode, body))


def _pad_len(length: int) -> int:
    return -length % 4
