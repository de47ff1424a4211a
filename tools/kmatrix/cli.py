"""Command line of tools/kernel-matrix."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import guest, kernels, rootfs
from .host import ToolError, cache_dir, ensure_programs, log
from .table import DEFAULT_TEST_KERNELS, Kernel, Table, load_table

CHECKOUT = Path(__file__).resolve().parents[2]
_print_lock = threading.Lock()
PYTEST = ("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernel")
# Per-guest limits. Measured on 2 cores: a kernel-test run takes ~5 min alone (x86_64; arm64
# ~6 min) but 12-20 min when the host also runs other guests (docs/KERNEL-MATRIX.md); the limits
# cover that and still end one hung guest inside CI's 90 minutes.
TIMEOUTS = {"x86_64": 25 * 60, "arm64": 30 * 60}
_SUMMARY = re.compile(r"\b\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b"
                      r".* in [\d.]+s|no tests ran")

EPILOG = f"""\
kernels: x86_64/5.10 x86_64/6.1 x86_64/6.12 arm64/6.1 arm64/6.12 (see `list`);
default for `test`: {' '.join(DEFAULT_TEST_KERNELS)}.

examples:
  tools/kernel-matrix list
  tools/kernel-matrix fetch                      # every kernel, plus the arm64 userland
  tools/kernel-matrix run x86_64/5.10 -- uname -r
  tools/kernel-matrix run arm64/6.12 -- 'sigscope selftest'
  tools/kernel-matrix test                       # tests/kernel in the default kernels
  tools/kernel-matrix test x86_64/6.1 -- -k filters -x
  tools/kernel-matrix probe x86_64/6.1           # measure the feature table row

cache: ${{SIGSCOPE_KMATRIX_CACHE:-/var/cache/sigscope-kmatrix}} (now {cache_dir()}); run logs in
its runs/ (or $SIGSCOPE_KMATRIX_OUT). Guests get CI (from the host), SIGSCOPE_KMATRIX_KERNEL and
SIGSCOPE_EXPECT_MISSING (the kernel's row of the feature table). Needs root. docs/KERNEL-MATRIX.md
"""


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: (before, after)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/kernel-matrix", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot Debian's kernels under qemu TCG and run commands or sigscope's kernel "
                    "tests inside, as root.", epilog=EPILOG)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="kernels, whether cached, and the feature table")
    f = sub.add_parser("fetch", help="download kernels (and build the arm64 userland) into the "
                                     "cache")
    f.add_argument("kernels", nargs="*", metavar="KERNEL", help="default: all")
    f.add_argument("--refresh", action="store_true",
                   help="update the package lists and take newer kernel packages")
    for name, text in (("run", "boot KERNEL, run COMMAND (bash -c) in the checkout, exit with "
                                "its status (125: the guest never reported one)"),
                       ("probe", "boot KERNEL and measure which sigscope features it lacks")):
        r = sub.add_parser(name, help=text, description=text)
        r.add_argument("kernel", metavar="KERNEL")
        r.add_argument("--timeout", type=float, help="seconds (default: 25 min x86_64, "
                                                     "30 min arm64)")
        r.add_argument("--append", default="", metavar="ARGS",
                       help="extra kernel command line, e.g. loglevel=7 for stack traces")
        if name == "run":
            r.add_argument("command", nargs="*", metavar="-- COMMAND",
                           help="joined with spaces if several words; one word is a script")
    t = sub.add_parser("test", help="run tests/kernel in each KERNEL, print a table",
                       description="Run `python -m pytest -q -p no:cacheprovider tests/kernel "
                                   "[PYTEST_ARGS]` in each kernel in turn; exit 1 if any fails.")
    t.add_argument("kernels", nargs="*", metavar="KERNEL",
                   help=f"default: {' '.join(DEFAULT_TEST_KERNELS)}")
    t.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS")
    t.add_argument("--timeout", type=float, help="per guest, seconds")
    t.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    t.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    t.add_argument("--jobs", "-j", type=int, default=default_jobs(), metavar="N",
                   help="guests booted at once (default: host CPUs / guest vCPUs, now "
                        f"{default_jobs()}; $SIGSCOPE_KMATRIX_JOBS); with more than one, each "
                        "guest's output is printed when it ends")
    return p


def default_jobs() -> int:
    """Guests at once: one per SIGSCOPE_KMATRIX_SMP host CPUs. A TCG guest with one vCPU keeps one
    host CPU busy, so on CI's two cores two guests halve the matrix's wall time (measured in
    docs/KERNEL-MATRIX.md); $SIGSCOPE_KMATRIX_JOBS overrides."""
    env = os.environ.get("SIGSCOPE_KMATRIX_JOBS")
    if env:
        return max(1, int(env))
    return max(1, (os.cpu_count() or 1) // max(1, guest.SMP))


def parse_args(argv: list[str]) -> argparse.Namespace:
    before, after = split_command(argv)
    args = parser().parse_args(before)
    if args.action == "run":
        args.command = list(args.command) + after
        if not args.command:
            parser().error("run: give a COMMAND after --")
    elif args.action == "test":
        args.pytest_args = after
    elif after:
        parser().error(f"{args.action} takes no `--` arguments")
    return args


def pick(table: Table, names: list[str]) -> list[Kernel]:
    unknown = [n for n in names if n not in table.kernels]
    if unknown:
        raise ToolError(f"unknown kernel(s) {', '.join(unknown)}; known: "
                        f"{', '.join(table.kernels)}")
    return [table.kernels[n] for n in names]


def guest_env(kernel: Kernel) -> dict[str, str]:
    env = {"SIGSCOPE_KMATRIX_KERNEL": kernel.name,
           "SIGSCOPE_EXPECT_MISSING": kernel.expect_missing()}
    if "CI" in os.environ:
        env["CI"] = os.environ["CI"]
    return env


def summary_line(output: str) -> str:
    for line in reversed(output.splitlines()):
        if _SUMMARY.search(line):
            return line.strip("= ").strip()
    return ""


def cmd_list(table: Table) -> int:
    feats = list(table.features)
    print(f"cache: {cache_dir()}")
    print(f"{'KERNEL':<12} {'CACHED':<36} SIGSCOPE_EXPECT_MISSING")
    for k in table.kernels.values():
        got = kernels.cached(k)
        where = got.release if got else "no"
        if k.arch == "arm64":
            where += " +userland" if rootfs.is_built() else " (no userland)"
        print(f"{k.name:<12} {where:<36} {k.expect_missing() or '-'}")
    print(f"{'host':<12} {'':<36} {','.join(table.host_missing) or '-'}")
    print("\nfeature table (x = missing):")
    cols = list(table.kernels) + ["host"]
    print(f"{'FEATURE':<22} " + " ".join(f"{c:<11}" for c in cols))
    for f in feats:
        row = [("x" if f in (table.kernels[c].missing if c != "host" else table.host_missing)
                else ".") for c in cols]
        print(f"{f:<22} " + " ".join(f"{v:<11}" for v in row) + f"  {table.features[f]}")
    return 0


def cmd_fetch(table: Table, names: list[str], refresh: bool) -> int:
    chosen = pick(table, names or list(table.kernels))
    for k in chosen:
        got = kernels.fetch(k, refresh=refresh)
        print(f"{k.name:<12} {got.package:<40} {got.image}")
    for arch in sorted({k.arch for k in chosen}):
        print(f"busybox {arch}: {kernels.busybox(arch)}")
    if any(k.arch == "arm64" for k in chosen):
        t0 = time.monotonic()
        built = rootfs.is_built()
        print(f"arm64 userland: {rootfs.build()}"
              + ("" if built else f" (built in {time.monotonic() - t0:.0f}s)"))
    return 0


def boot_and_report(kernel: Kernel, command: str, args: argparse.Namespace,
                    stream: bool = True) -> guest.Result:
    res = guest.boot(kernel, command, CHECKOUT, guest_env(kernel),
                     timeout=args.timeout or TIMEOUTS[kernel.arch], stream=stream,
                     append=args.append)
    if stream and not res.output.endswith("\n"):
        print(flush=True)
    boot_s = res.guest_times.get("start")
    log(f"{kernel.name}: status {res.status}, wall {res.wall:.0f}s"
        + (f", boot {boot_s:.1f}s guest time" if boot_s is not None else "")
        + (" (timed out)" if res.timed_out else "") + f"; logs in {res.out}")
    if res.status == guest.NO_STATUS and not (res.out / "rc").exists():
        print(f"--- {kernel.name}: no exit status from the guest; console tail:", file=sys.stderr)
        print(res.console_tail(), file=sys.stderr)
    return res


def cmd_run(table: Table, args: argparse.Namespace) -> int:
    (kernel,) = pick(table, [args.kernel])
    command = args.command[0] if len(args.command) == 1 else shlex.join(args.command)
    return boot_and_report(kernel, command, args).status


def cmd_probe(table: Table, args: argparse.Namespace) -> int:
    (kernel,) = pick(table, [args.kernel])
    probe = Path(__file__).with_name("probe_features.py")
    res = boot_and_report(kernel, f"python3 {shlex.quote(str(probe))} --json "
                                  "$KM_OUT/features.json", args)
    try:
        measured = json.loads((res.out / "features.json").read_text())
    except (OSError, ValueError):
        return res.status or 1
    missing = sorted(n for n, ok in measured.items() if not ok)
    print(f"{kernel.name}: measured missing = {','.join(missing) or '-'}; "
          f"table says {kernel.expect_missing() or '-'}")
    return 0 if set(missing) == set(kernel.missing) else 3


def cmd_test(table: Table, args: argparse.Namespace) -> int:
    chosen = pick(table, args.kernels or list(DEFAULT_TEST_KERNELS))
    arm = [k for k in chosen if k.arch == "arm64"]
    for k in chosen:  # all downloads first: a missing mirror fails fast, not after 15 minutes
        kernels.fetch(k)
        kernels.busybox(k.arch)
    builder = None
    build_error: list[BaseException] = []
    if arm and not rootfs.is_built():
        def build() -> None:
            try:
                rootfs.build()
            except BaseException as exc:  # reported when the arm64 guest needs it
                build_error.append(exc)
        t_build = time.monotonic()
        if os.environ.get("SIGSCOPE_KMATRIX_OVERLAP") == "1":
            builder = threading.Thread(target=build, daemon=True)
            builder.start()
        else:
            build()
        log(f"arm64 userland build started {'in the background' if builder else ''}"
            f" ({time.monotonic() - t_build:.0f}s so far)")
    python = {"x86_64": (CHECKOUT / ".venv/bin/python") if (CHECKOUT / ".venv/bin/python").exists()
              else "python3", "arm64": "python3"}
    jobs = max(1, min(args.jobs, len(chosen)))
    if jobs > 1:  # install qemu once, before guests start (apt holds a lock)
        ensure_programs({"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}[k.arch]
                        for k in chosen)

    def run_one(k: Kernel) -> dict:
        if k.arch == "arm64" and builder:
            builder.join()
            if build_error:
                raise build_error[0]
        cmd = shlex.join([str(python[k.arch]), *PYTEST, *args.pytest_args])
        log(f"{k.name}: {cmd}")
        res = boot_and_report(k, cmd, args, stream=jobs == 1)
        if jobs > 1:
            with _print_lock:
                print(f"--- {k.name}: guest output ---", flush=True)
                print(res.output, end="" if res.output.endswith("\n") else "\n", flush=True)
        result = "pass" if res.status == 0 else (
            "timeout" if res.timed_out else "no-status" if res.status == guest.NO_STATUS
            else "FAIL")
        return {"kernel": k.name, "result": result, "status": res.status,
                "summary": summary_line(res.output), "wall_s": round(res.wall, 1),
                "boot_s": res.guest_times.get("start"), "log": str(res.out),
                "console": res.console_alerts()}

    t_all = time.monotonic()
    if jobs == 1:
        rows = [run_one(k) for k in chosen]
    else:
        log(f"{jobs} guests at once")
        with ThreadPoolExecutor(jobs) as pool:  # in the given order: longest runs first
            rows = list(pool.map(run_one, chosen))
    log(f"matrix wall time {time.monotonic() - t_all:.0f}s ({jobs} at once)")
    print()
    print(f"{'KERNEL':<12} {'RESULT':<9} {'WALL':>6}  PYTEST SUMMARY")
    for r in rows:
        alerts = " ".join(f"[{k} x{v}]" for k, v in r["console"].items())
        print(f"{r['kernel']:<12} {r['result']:<9} {r['wall_s']:>5.0f}s  {r['summary'] or '-'}"
              + (f"  console: {alerts}" if alerts else ""))
    for r in rows:
        print(f"  {r['kernel']}: {r['log']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["result"] == "pass" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    table = load_table()
    try:
        if args.action == "list":
            return cmd_list(table)
        if os.geteuid() != 0:
            raise ToolError("needs root (apt-get, debootstrap, qemu sharing /)")
        if args.action == "fetch":
            return cmd_fetch(table, args.kernels, args.refresh)
        if args.action == "run":
            return cmd_run(table, args)
        if args.action == "probe":
            return cmd_probe(table, args)
        return cmd_test(table, args)
    except ToolError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
