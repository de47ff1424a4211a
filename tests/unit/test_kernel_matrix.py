"""The pure parts of tools/kernel-matrix: feature table, cpio writer, module order, apt sources,
command line. No qemu, no apt, no root."""

from __future__ import annotations

import gzip
import io
import json
import stat
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from kmatrix import cli, cpio, debian, guest, initramfs, table  # noqa: E402

FEATURES = ("ringbuf", "tp_btf", "btf_vmlinux", "map_batch", "bpf_atomics", "recursion_misses",
            "get_current_task_btf", "perf_event_link", "task_pt_regs", "sched_exit_group_dead",
            "cgroup_kill", "fentry", "pidfd_thread")


def test_shipped_table_uses_exactly_the_feature_names_of_sigscope_bpf_features() -> None:
    t = table.load_table()
    assert tuple(t.features) == FEATURES
    assert set(t.kernels) == {"x86_64/5.10", "x86_64/6.1", "x86_64/6.12", "arm64/6.1",
                              "arm64/6.12"}
    assert set(table.DEFAULT_TEST_KERNELS) <= set(t.kernels)
    assert "bpf_atomics" in t.kernels["x86_64/5.10"].missing
    assert t.kernels["x86_64/6.12"].expect_missing() == "sched_exit_group_dead"


def test_table_rejects_unknown_features_bad_arches_and_duplicates() -> None:
    good = {"features": {"ringbuf": ""}, "kernels": {
        "x86_64/1.0": {"arch": "x86_64", "suite": "s", "package": "p", "missing": ["ringbuf"]}}}
    assert table.parse_table(good).kernels["x86_64/1.0"].missing == ("ringbuf",)
    for broken in (
        {"kernels": {}},
        {**good, "kernels": {"x86_64/1.0": {**good["kernels"]["x86_64/1.0"], "missing": ["x"]}}},
        {**good, "kernels": {"arm64/1.0": {**good["kernels"]["x86_64/1.0"]}}},
        {**good, "kernels": {"x86_64/1.0": {**good["kernels"]["x86_64/1.0"],
                                            "missing": ["ringbuf", "ringbuf"]}}},
        {**good, "host": {"missing": ["nope"]}},
    ):
        with pytest.raises(table.TableError):
            table.parse_table(json.loads(json.dumps(broken)))


def test_cpio_writer_round_trips_and_pads_to_four_bytes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF" + b"x" * 5)
    (tmp_path / "bin" / "busybox").chmod(0o755)
    (tmp_path / "sh").symlink_to("bin/busybox")
    buf = io.BytesIO()
    w = cpio.CpioWriter(buf)
    w.tree(tmp_path)
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    entries = {name: (mode, body) for name, mode, body in cpio.parse_newc(data)}
    assert list(entries) == ["bin", "sh", "bin/busybox", "init"]
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["sh"] == (stat.S_IFLNK | 0o777, b"bin/busybox")
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELFxxxxx")
    assert data.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))


MODULES_DEP = """\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/char/virtio-console.ko:
"""


def test_module_order_puts_dependencies_first_once_and_skips_builtins() -> None:
    deps = initramfs.parse_modules_dep(MODULES_DEP)
    assert deps["virtio_console"] == ("kernel/drivers/char/virtio-console.ko", [])
    order = initramfs.load_order(["virtio_pci", "9pnet_virtio", "9p", "overlay",
                                  "virtio-console"], deps, builtin={"virtio_pci"})
    names = [initramfs.module_name(p) for p in order]
    assert names == ["9pnet", "virtio_ring", "9pnet_virtio", "netfs", "9p", "overlay",
                     "virtio_console"]
    with pytest.raises(Exception, match="neither"):
        initramfs.load_order(["virtio_pci"], deps)


def test_module_cycle_is_an_error() -> None:
    deps = initramfs.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(Exception, match="cycle"):
        initramfs.load_order(["a"], deps)


def test_read_module_decompresses(tmp_path: Path) -> None:
    (tmp_path / "m.ko.gz").write_bytes(gzip.compress(b"\x7fELFmod"))
    assert initramfs.read_module(tmp_path / "m.ko.gz") == b"\x7fELFmod"


def test_mirrors_come_from_one_line_and_deb822_sources() -> None:
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
              "Types: deb\nURIs: http://mirror.example/debian-security/\nSuites: x\n")
    assert debian.parse_mirrors(deb822) == ("http://mirror.example/debian",
                                            "http://mirror.example/debian-security")
    one_line = "deb [signed-by=/k.gpg] https://m.example/debian bookworm main\n"
    assert debian.parse_mirrors(one_line) == ("https://m.example/debian", None)
    assert debian.parse_mirrors("deb http://ubuntu.example/ubuntu jammy main") == (None, None)
    text = debian.sources_list("arm64", "http://m/debian", None)
    assert "deb [arch=arm64 signed-by=" in text and " trixie main" in text
    assert "security" not in text


def test_newest_package_is_chosen_numerically() -> None:
    names = ["linux-image-6.1.0-9-amd64-unsigned", "linux-image-6.1.0-10-amd64-unsigned",
             "linux-image-6.1.0-10-cloud-amd64-unsigned", "linux-image-6.1.0-10-amd64"]
    pattern = table.load_table().kernels["x86_64/6.1"].package
    assert debian.newest_match(names, pattern) == "linux-image-6.1.0-10-amd64-unsigned"
    assert debian.newest_match(names, "nothing") is None


def test_command_line_splits_at_double_dash() -> None:
    a = cli.parse_args(["run", "x86_64/6.1", "--", "uname", "-r"])
    assert (a.kernel, a.command) == ("x86_64/6.1", ["uname", "-r"])
    t = cli.parse_args(["test", "x86_64/5.10", "arm64/6.12", "--", "-k", "filters", "-x"])
    assert t.kernels == ["x86_64/5.10", "arm64/6.12"] and t.pytest_args == ["-k", "filters", "-x"]
    assert cli.parse_args(["test"]).kernels == []
    with pytest.raises(SystemExit):
        cli.parse_args(["run", "x86_64/6.1"])
    with pytest.raises(SystemExit):
        cli.parse_args(["list", "--", "x"])


def test_pytest_summary_line_is_found() -> None:
    out = "....F\n=== short test summary info ===\nFAILED tests/kernel/t.py::x - boom\n" \
          "1 failed, 4 passed in 301.22s (0:05:01)\n"
    assert cli.summary_line(out) == "1 failed, 4 passed in 301.22s (0:05:01)"
    assert cli.summary_line("Traceback ...\n") == ""


def test_guest_env_passes_ci_and_the_table_row(monkeypatch: pytest.MonkeyPatch) -> None:
    k = table.load_table().kernels["x86_64/6.1"]
    monkeypatch.setenv("CI", "true")
    assert cli.guest_env(k) == {"CI": "true", "SIGSCOPE_KMATRIX_KERNEL": "x86_64/6.1",
                                "SIGSCOPE_EXPECT_MISSING": "sched_exit_group_dead,pidfd_thread"}
    monkeypatch.delenv("CI")
    assert "CI" not in cli.guest_env(k)


def test_command_script_quotes_and_changes_directory() -> None:
    script = guest.command_script("echo 'a b' && exit 3", Path("/w/x y"), {"K": "a,b"},
                                  ["/w/.venv/bin"], {"sigscope": "#!/bin/sh\nexec x"})
    assert "export K=a,b\n" in script
    assert "cd '/w/x y' || exit 125\n" in script
    assert script.endswith("bash -c 'echo '\"'\"'a b'\"'\"' && exit 3'\n")
    assert "/usr/local/bin/sigscope" in script


def test_qemu_command_line_shares_and_console() -> None:
    t = table.load_table()
    x = guest.qemu_argv(t.kernels["x86_64/6.1"], Path("/k"), Path("/i"), Path("/o"), Path("/"),
                        None)
    assert x[0] == "qemu-system-x86_64" and "tcg,thread=multi" in x
    assert any("console=ttyS0" in a and "km_out=/o" in a and "km_ckout" not in a for a in x)
    a = guest.qemu_argv(t.kernels["arm64/6.12"], Path("/k"), Path("/i"), Path("/o"),
                        Path("/r"), Path("/ck"))
    assert a[:3] == ["qemu-system-aarch64", "-M", "virt"]
    assert any("console=ttyAMA0" in s and "km_ckout=/ck" in s for s in a)
    assert "local,id=kmckout,path=/ck,security_model=none,multidevs=remap,readonly=on" in a


def test_jobs_default_to_one_guest_per_smp_host_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGSCOPE_KMATRIX_JOBS", raising=False)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(guest, "SMP", 1)
    assert cli.default_jobs() == 2
    monkeypatch.setattr(guest, "SMP", 2)
    assert cli.default_jobs() == 1
    monkeypatch.setenv("SIGSCOPE_KMATRIX_JOBS", "3")
    assert cli.default_jobs() == 3
    assert cli.parse_args(["test", "-j", "1", "x86_64/6.1"]).jobs == 1
