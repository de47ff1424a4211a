"""The guest's initramfs: a static busybox, the virtio/9p/overlay modules and our /init.

/init mounts the root share (tag `kmroot`) read-only with a tmpfs overlay on top, the output
folder (tag `kmout`, read-write) at its host path, optionally the host checkout (tag `kmckout`,
read-only + tmpfs overlay) at its host path, the usual pseudo file systems, then runs
$KM_OUT/cmd.sh as root in the new root and writes its exit status to $KM_OUT/rc.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import re
import subprocess
from pathlib import Path

from .cpio import CpioWriter
from .host import ToolError, atomic_write, ensure_programs, log, run

# Needed to reach the shares; their dependencies (virtio_ring, netfs, fscache, ...) follow.
MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")
_COMPRESSED = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


def module_name(path: str) -> str:
    """kernel/fs/9p/9p.ko.xz -> 9p; dashes and underscores are the same in module names."""
    return _COMPRESSED.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {name: (path, [dependency names])}."""
    table = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        table[module_name(path)] = (path.strip(), [module_name(d) for d in deps.split()])
    return table


def load_order(wanted: tuple[str, ...] | list[str], deps: dict[str, tuple[str, list[str]]],
               builtin: set[str] = frozenset()) -> list[str]:
    """Paths to insmod, each after its dependencies; built-in modules are skipped."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if state.get(name) == "done":
            return
        if name not in deps:
            if name in builtin:
                return
            raise ToolError(f"module {name} is neither in modules.dep nor built in")
        if state.get(name) == "visiting":
            raise ToolError(f"module dependency cycle through {name}")
        state[name] = "visiting"
        for dep in deps[name][1]:
            visit(dep)
        state[name] = "done"
        order.append(deps[name][0])

    for name in wanted:
        visit(name)
    return order


def read_module(path: Path) -> bytes:
    """A module file, decompressed (busybox insmod wants plain ELF)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        ensure_programs(["zstd"])
        return subprocess.run(["zstd", "-qdc", str(path)], check=True,
                              stdout=subprocess.PIPE).stdout
    return data


def ensure_depmod(moddir: Path) -> None:
    """An unpacked (never installed) kernel package has no modules.dep yet: make it."""
    if (moddir / "modules.dep").stat().st_size if (moddir / "modules.dep").exists() else 0:
        return
    ensure_programs(["depmod"])
    base = moddir.parent.parent.parent  # <base>/lib/modules/<version>
    run(["depmod", "-b", str(base), moddir.name], quiet=True)


INIT = r"""#!/bin/busybox sh
# sigscope kernel-matrix guest init (tools/kmatrix/initramfs.py)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
arg() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
for m in $(cat /mods/order); do insmod /mods/$m || echo "kmatrix-init: insmod $m failed"; done
OUT=$(arg km_out); CKOUT=$(arg km_ckout)
O9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o $O9,ro,cache=loose kmroot /lower || echo "kmatrix-init: root share mount failed"
mount -t tmpfs -o mode=755 rw /rw; mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || echo "kmatrix-init: overlay failed"
N=/newroot
# /tmp first: a checkout under /tmp (CI clones anywhere) must stay visible above it.
mount -t tmpfs tmp $N/tmp
if [ -n "$CKOUT" ]; then
  mkdir -p /ck /rw/ckupper /rw/ckwork $N$CKOUT
  mount -t 9p -o $O9,ro,cache=loose kmckout /ck || echo "kmatrix-init: checkout mount failed"
  mount -t overlay overlay -o lowerdir=/ck,upperdir=/rw/ckupper,workdir=/rw/ckwork $N$CKOUT \
    || echo "kmatrix-init: checkout overlay failed"
fi
mkdir -p $N$OUT
mount -t 9p -o $O9 kmout $N$OUT || echo "kmatrix-init: output share mount failed"
mount -t proc proc $N/proc; mount -t sysfs sys $N/sys; mount -t devtmpfs dev $N/dev
mkdir -p $N/dev/pts $N/dev/shm; mount -t devpts devpts $N/dev/pts; mount -t tmpfs shm $N/dev/shm
mount -t tmpfs run $N/run
mount -t tracefs tracefs $N/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $N/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $N/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup 2>/dev/null
echo "+memory +pids +cpu +io" > $N/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
ip link set lo up 2>/dev/null; hostname kmatrix
echo "kmatrix-init: command start at uptime $(cut -d' ' -f1 /proc/uptime)"
echo "start $(cut -d' ' -f1 /proc/uptime)" > $N$OUT/times
chroot $N /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 KM_OUT=$OUT \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash $OUT/cmd.sh > $N$OUT/cmd.log 2>&1 < /dev/null
rc=$?
echo "end $(cut -d' ' -f1 /proc/uptime)" >> $N$OUT/times
echo $rc > $N$OUT/rc
echo "kmatrix-init: command exited $rc at uptime $(cut -d' ' -f1 /proc/uptime)"
sync; umount $N$OUT 2>/dev/null
echo o > /proc/sysrq-trigger; sleep 5; poweroff -f
"""

# Part of the cached initramfs' name: a changed /init never boots from a stale cache.
INIT_DIGEST = hashlib.sha256(INIT.encode()).hexdigest()[:12]


def build(dest: Path, busybox: Path, moddir: Path) -> Path:
    """Write dest (a gzip'd newc cpio) unless it exists; returns dest."""
    if dest.exists() and dest.stat().st_size:
        return dest
    ensure_depmod(moddir)
    deps = parse_modules_dep((moddir / "modules.dep").read_text())
    builtin_file = moddir / "modules.builtin"
    builtin = ({module_name(p) for p in builtin_file.read_text().split()}
               if builtin_file.exists() else set())
    order = load_order(MODULES, deps, builtin)
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "mods", "proc", "sys", "dev", "lower", "rw", "newroot"):
        w.directory(d)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    names = []
    for rel in order:
        name = module_name(rel) + ".ko"
        w.file(f"mods/{name}", read_module(moddir / rel))
        names.append(name)
    w.file("mods/order", ("\n".join(names) + "\n").encode())
    w.file("init", INIT.encode(), 0o755)
    w.close()
    atomic_write(dest, gzip.compress(buf.getvalue(), compresslevel=1))
    log(f"initramfs {dest} ({', '.join(names) or 'all built in'})")
    return dest


def is_static_busybox(path: Path) -> bool:
    """A static busybox has no PT_INTERP; checked without file(1)."""
    data = path.read_bytes()
    return data[:4] == b"\x7fELF" and b"/ld-linux" not in data
