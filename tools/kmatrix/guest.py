"""Booting one kernel under qemu TCG and running one command inside as root."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import initramfs, kernels, rootfs
from .host import ToolError, cache_dir, ensure_programs
from .table import Kernel

MEMORY = "2G"
# One vCPU. With two vCPUs under multi-threaded TCG, guests wedged here while the kernel patched
# the jump labels of the syscall tracepoints (text_poke_bp, int3 + IPI sync): one vCPU looped
# for minutes on the patched 5-byte NOP in syscall_trace_enter (soft lockups, RCU stalls, RIP
# never moving), and once took an int3 Oops at that site. Real CPUs cannot do that: it is the
# emulator's cross-modifying code between vCPU threads, not our programs. Single-threaded TCG
# avoids it but ran the suite ~3x slower; one vCPU avoids it at full speed (per-CPU layouts
# with more CPUs are covered on the host). SIGSCOPE_KMATRIX_SMP=2 brings two vCPUs back.
SMP = int(os.environ.get("SIGSCOPE_KMATRIX_SMP", "1"))
TCG_THREAD = "multi"
NO_STATUS = 125  # exit status when the guest never reported one (boot failure, timeout)
ALERTS = {"soft-lockup": re.compile(r"soft lockup"), "rcu-stall": re.compile(r"rcu.*stall"),
          "oops": re.compile(r"\bBUG:|Oops"), "warning": re.compile(r"WARNING: CPU")}


@dataclass
class Result:
    status: int  # the command's exit status, or NO_STATUS
    wall: float  # seconds, qemu start to exit
    out: Path  # console.log, cmd.log, cmd.sh, rc, times
    guest_times: dict[str, float]
    timed_out: bool = False

    @property
    def output(self) -> str:
        try:
            return (self.out / "cmd.log").read_text(errors="replace")
        except OSError:
            return ""

    def console_alerts(self) -> dict[str, int]:
        """How often the guest kernel complained (soft lockups, RCU stalls, oopses, warnings)."""
        try:
            text = (self.out / "console.log").read_text(errors="replace")
        except OSError:
            return {}
        counts: dict[str, int] = {}
        for line in text.splitlines():
            for label, rx in ALERTS.items():
                if rx.search(line):
                    counts[label] = counts.get(label, 0) + 1
        return counts

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = (self.out / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def qemu_argv(kernel: Kernel, image: Path, initrd: Path, out: Path, root: Path,
              checkout: Path | None, append: str = "") -> list[str]:
    """The qemu command line: TCG (KVM hangs on these hosts), 9p shares, serial console."""
    if kernel.arch == "x86_64":
        argv = ["qemu-system-x86_64", "-cpu", "max"]
        console = "ttyS0"
    else:
        argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "max,pauth-impdef=on"]
        console = "ttyAMA0"
    # loglevel=5: warnings and the stack dumps that follow a soft lockup report reach the log.
    cmdline = (f"console={console} panic=-1 loglevel=5 sysrq_always_enabled=1 km_out={out}"
               + (f" km_ckout={checkout}" if checkout else "") + (f" {append}" if append else ""))
    argv += ["-accel", f"tcg,thread={TCG_THREAD}", "-smp", str(SMP), "-m", MEMORY,
             "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
             "-nic", "none", "-kernel", str(image), "-initrd", str(initrd), "-append", cmdline]
    shares = [("kmroot", root, True), ("kmout", out, False)]
    if checkout:
        shares.append(("kmckout", checkout, True))
    for tag, path, readonly in shares:
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap"
                 + (",readonly=on" if readonly else ""),
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    return argv


def command_script(command: str, cwd: Path, env: dict[str, str], path_prefix: list[str],
                   shims: dict[str, str]) -> str:
    """$KM_OUT/cmd.sh: environment, shims (e.g. a `sigscope` for arm64), cd, the command."""
    lines = ["# written by tools/kernel-matrix"]
    for name, body in shims.items():
        target = f"/usr/local/bin/{name}"
        lines.append(f"printf '%s\\n' {shlex.quote(body)} > {target}; chmod +x {target}")
    for key, value in env.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    if path_prefix:
        lines.append(f"export PATH={shlex.quote(':'.join(path_prefix))}:$PATH")
    lines += [f"cd {shlex.quote(str(cwd))} || exit 125", f"bash -c {shlex.quote(command)}"]
    return "\n".join(lines) + "\n"


def _follow(path: Path, stop: threading.Event, sink) -> None:
    """Copy what the guest appends to path to sink while it runs."""
    pos = 0
    while True:
        stopping = stop.is_set()
        try:
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            sink.write(chunk.decode(errors="replace"))
            sink.flush()
        if stopping:
            return
        stop.wait(0.5)


def run_dir(kernel: Kernel) -> Path:
    base = Path(os.environ.get("SIGSCOPE_KMATRIX_OUT") or cache_dir() / "runs")
    out = base / f"{kernel.slug}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    out.mkdir(parents=True)
    return out


def boot(kernel: Kernel, command: str, checkout: Path, env: dict[str, str], *,
         timeout: float, stream: bool = False, append: str = "") -> Result:
    """Boot kernel, run command (bash -c) in checkout as root; the guest's view:

    x86_64: the host's / read-only (+ tmpfs overlay), so the checkout and its .venv are there.
    arm64: the cached arm64 userland read-only (+ overlay), the checkout at the same path
    (+ overlay), PYTHONPATH=<checkout>/src and `python`/`sigscope` shims.
    """
    got = kernels.fetch(kernel)
    if kernel.arch == "x86_64":
        ensure_programs(["qemu-system-x86_64"])
        # The host's / holds the venv's interpreter; the checkout is shared on its own as well,
        # so that it stays visible wherever it is (the guest mounts a tmpfs on /tmp).
        root, ck = Path("/"), checkout
        venv = checkout / ".venv" / "bin"
        prefix = [str(venv)] if venv.is_dir() else []
        shims: dict[str, str] = {}
    else:
        ensure_programs(["qemu-system-aarch64"])
        root, ck = rootfs.build(), checkout
        env = dict(env, PYTHONPATH=str(checkout / "src"))
        prefix = []
        shims = {"python": '#!/bin/sh\nexec python3 "$@"',
                 "sigscope": '#!/bin/sh\nexec python3 -m sigscope "$@"'}
    initrd = initramfs.build(cache_dir() / "initramfs"
                             / f"{kernel.slug}-{got.release}-{initramfs.INIT_DIGEST}.cpio.gz",
                             kernels.busybox(kernel.arch), got.moddir)
    out = run_dir(kernel)
    (out / "cmd.sh").write_text(command_script(command, checkout, env, prefix, shims))
    argv = qemu_argv(kernel, got.image, initrd, out, root, ck, append)
    (out / "qemu.argv").write_text(shlex.join(argv) + "\n")
    stop = threading.Event()
    follower = None
    if stream:
        follower = threading.Thread(target=_follow, args=(out / "cmd.log", stop, sys.stdout),
                                    daemon=True)
        follower.start()
    t0 = time.monotonic()
    timed_out = False
    with (out / "console.log").open("wb") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall = time.monotonic() - t0
    stop.set()
    if follower:
        follower.join()
    times = {}
    try:
        for line in (out / "times").read_text().splitlines():
            key, value = line.split()
            times[key] = float(value)
    except (OSError, ValueError):
        pass
    try:
        status = int((out / "rc").read_text().strip())
    except (OSError, ValueError):
        status = NO_STATUS
    return Result(status, wall, out, times, timed_out)


def require_root() -> None:
    if os.geteuid() != 0:
        raise ToolError("run as root (qemu's 9p export of / must read everything)")
    if not shutil.which("qemu-system-x86_64") and not shutil.which("apt-get"):
        raise ToolError("no qemu and no apt-get")
