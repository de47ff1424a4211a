"""Container context on the real cgroup v2 hierarchy: cgroups made by the test with the names
docker and the kubelet/containerd give them, a process moved into each, and the resolver's
id -> path -> context checked against the kernel's own ids (stat, name_to_handle_at(2) and
bpf_get_current_cgroup_id() in a BPF program) and /proc/<pid>/cgroup."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigscope.bpf import asm
from sigscope.bpf.asm import R0, R1, R2, R6, R10
from sigscope.bpf.attach import attach_tracepoint
from sigscope.bpf.maps import ArrayMap
from sigscope.bpf.program import Program
from sigscope.containers import (
    CgroupResolver,
    cgroup2_mount,
    cgroup_id_of,
    parse_mountinfo,
    proc_cgroup_fallback,
    proc_nspid_fallback,
)

TIMEOUT = 20.0
DOCKER_ID = uuid.uuid4().hex + uuid.uuid4().hex
CRI_ID = uuid.uuid4().hex + uuid.uuid4().hex
POD_UID = str(uuid.uuid4())
DOCKER = f"system.slice/docker-{DOCKER_ID}.scope"
POD = (f"kubepods.slice/kubepods-burstable.slice/"
       f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice")
CRI = f"{POD}/cri-containerd-{CRI_ID}.scope"
SERVICE = "system.slice/cron.service"
# The child: waits for a line (it is moved meanwhile), then signals itself (SIGURG: ignored by
# default) from inside its cgroup, says so, and waits until told to exit.
CHILD = 'read -r _; kill -s URG "$$"; echo sent; read -r _ || true'


class Child:
    """A shell moved into `group` (its cgroup.procs); ``signal()`` makes it send itself SIGURG
    from there."""

    def __init__(self, group: Path) -> None:
        self.proc = subprocess.Popen(["bash", "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        (group / "cgroup.procs").write_text(str(self.proc.pid))

    def signal(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "sent\n"

    def own_cgroup(self) -> str:
        lines = Path(f"/proc/{self.proc.pid}/cgroup").read_text().splitlines()
        (v2,) = [line for line in lines if line.startswith("0::")]
        return v2[3:]

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        if self.proc.wait(TIMEOUT) != 0:
            raise AssertionError(f"child exited {self.proc.returncode}")


@pytest.fixture
def hierarchy() -> Iterator[tuple[Path, str]]:
    """(mount point, the test's own parent cgroup's path) under the v2 hierarchy, with the
    runtime-like cgroups made under it; everything removed afterwards."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")  # the kmatrix guests mount one
    point = Path(mount.mount_point)
    parent = f"/sigscope-test-{uuid.uuid4().hex[:12]}"
    top = point / parent.lstrip("/")
    top.mkdir()
    made: list[Path] = []
    try:
        for relative in (DOCKER, CRI, SERVICE):
            group = top
            for part in relative.split("/"):
                group = group / part
                if not group.exists():
                    group.mkdir()
                    made.append(group)
        yield point, parent
    finally:
        for group in sorted(made, key=lambda p: len(p.parts), reverse=True):
            group.rmdir()
        top.rmdir()


def cgroup_id_program(ids: ArrayMap, tgid: int) -> list:
    """ids[0] = bpf_get_current_cgroup_id() of the last signal that thread group `tgid`
    generated (signal:signal_generate runs in the sender)."""
    return [
        asm.call("get_current_pid_tgid"),
        asm.alu64_imm("RSH", R0, 32),
        asm.jmp_imm("JNE", R0, tgid, "out"),
        asm.call("get_current_cgroup_id"),
        asm.mov64_reg(R6, R0),
        asm.st("W", R10, -4, 0),
        asm.ld_map_fd(R1, ids.fd),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm("ADD", R2, -4),
        asm.call("map_lookup_elem"),
        asm.jmp_imm("JEQ", R0, 0, "out"),
        asm.stx("DW", R0, R6, 0),
        asm.label("out"),
        asm.mov64_imm(R0, 0),
        asm.exit_(),
    ]


def kernel_cgroup_id(child: Child) -> int:
    """The cgroup id the kernel reports for `child` while it sends a signal."""
    with ArrayMap(8, 1, name="cgid") as ids, \
            Program.load(cgroup_id_program(ids, child.proc.pid), name="cgid") as prog, \
            attach_tracepoint(prog, "signal", "signal_generate"):
        child.signal()
        value = ids.lookup(struct.pack("=I", 0))
    assert value is not None
    (cgroup_id,) = struct.unpack("=Q", value)
    assert cgroup_id != 0, "the program did not see the child's signal"
    return int(cgroup_id)


def test_this_host_has_a_cgroup2_mount_in_mountinfo() -> None:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    mount = cgroup2_mount()
    assert mount is not None and mount in mounts
    assert (Path(mount.mount_point) / "cgroup.controllers").exists()


@pytest.mark.parametrize("use_handles", [True, False], ids=["handles", "rescan"])
def test_resolver_maps_kernel_ids_to_paths_and_context(hierarchy, use_handles: bool) -> None:
    point, parent = hierarchy
    expected = {
        DOCKER: dict(runtime="docker", container_id=DOCKER_ID, pod_uid=None, qos=None,
                     unit=f"docker-{DOCKER_ID}.scope"),
        CRI: dict(runtime="containerd", container_id=CRI_ID, pod_uid=POD_UID, qos="burstable",
                  unit=f"cri-containerd-{CRI_ID}.scope"),
        SERVICE: dict(runtime=None, container_id=None, pod_uid=None, qos=None,
                      unit="cron.service"),
    }
    children = {relative: Child(point / parent.lstrip("/") / relative) for relative in expected}
    try:
        with CgroupResolver(use_handles=use_handles, warn=None) as resolver:
            assert resolver.available
            for relative, fields in expected.items():
                child = children[relative]
                path = f"{parent}/{relative}"
                directory = point / path.lstrip("/")
                by_stat = directory.stat().st_ino
                by_handle = cgroup_id_of(str(directory))
                by_bpf = kernel_cgroup_id(child)
                assert by_stat == by_handle == by_bpf, (relative, by_stat, by_handle, by_bpf)
                assert child.own_cgroup() == path == proc_cgroup_fallback(child.proc.pid)
                assert resolver.path(by_bpf) == path
                assert resolver.id_of(path) == by_bpf
                context = resolver.context(by_bpf)
                assert context is not None and context.cgroup_path == path
                got = {name: getattr(context, name) for name in fields}
                assert got == fields, relative
            # the kernel answered (handles) or one rescan found all three (no handles)
            assert resolver.scans == (0 if use_handles else 1)
            assert resolver.use_handles == use_handles
            matched = resolver.ids_of_container(CRI_ID[:12])
            assert {c.cgroup_path for c in matched.values()} == {f"{parent}/{CRI}"}
            assert set(matched) == {resolver.id_of(f"{parent}/{CRI}")}
            with pytest.raises(FileNotFoundError):
                resolver.id_of(f"{parent}/no-such-cgroup")
            with pytest.raises(OSError, match="'..'"):
                resolver.id_of(f"{parent}/../x")
    finally:
        for child in children.values():
            child.stop()


@pytest.mark.parametrize("use_handles", [True, False], ids=["handles", "rescan"])
def test_a_removed_cgroup_stays_resolved_and_unknown_ids_are_none(hierarchy,
                                                                  use_handles: bool) -> None:
    point, parent = hierarchy
    gone = point / parent.lstrip("/") / "system.slice" / f"docker-{'e' * 64}.scope"
    gone.mkdir()
    try:
        gone_id = cgroup_id_of(str(gone))
        resolver = CgroupResolver(warn=None, use_handles=use_handles)
        primed = CgroupResolver(warn=None, use_handles=use_handles)
        primed.rescan()
        fresh = CgroupResolver(warn=None, use_handles=use_handles)
        assert resolver.path(gone_id) == f"{parent}/system.slice/docker-{'e' * 64}.scope"
    finally:
        gone.rmdir()
    with resolver, primed, fresh:
        context = resolver.context(gone_id)
        assert context is not None and context.container_id == "e" * 64
        assert primed.path(gone_id) == resolver.path(gone_id)  # seen by the scan at start
        # a resolver that never saw it: the kernel no longer knows the id, nor does a rescan
        assert fresh.path(gone_id) is None
        assert fresh.scans == (0 if use_handles else 1)
        assert fresh.path(gone_id) is None
        assert fresh.scans == (0 if use_handles else 1)  # rate-limited


CLONE_NEWPID = 0x20000000  # linux/sched.h


def test_nspid_fallback_in_a_new_pid_namespace() -> None:
    """A child that unshare(2)s CLONE_NEWPID forks pid 1 of the new namespace: NSpid of that
    grandchild is (its host pid, 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pid_r, pid_w = os.pipe()
    hold_r, hold_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(hold_w)
            if libc.unshare(CLONE_NEWPID) != 0:
                os.write(pid_w, b"-%d\n" % ctypes.get_errno())
                os._exit(1)
            inner = os.fork()
            if inner == 0:
                os.read(hold_r, 1)  # live until the parent has looked
                os._exit(0)
            os.write(pid_w, b"%d\n" % inner)
            os.waitpid(inner, 0)
        finally:
            os._exit(0)
    os.close(pid_w)
    os.close(hold_r)
    try:
        inner = int(os.read(pid_r, 64).split()[0])
        assert inner > 0, f"unshare(CLONE_NEWPID): errno {-inner}"
        assert proc_nspid_fallback(inner) == (inner, 1)
        assert proc_nspid_fallback(os.getpid()) == (os.getpid(),)
    finally:
        os.close(hold_w)
        os.close(pid_r)
        os.waitpid(middle, 0)
    assert proc_nspid_fallback(inner) is None  # gone: the fallback knows nothing


WITHOUT_DAC_READ_SEARCH = r"""
import ctypes, sys
from sigscope.containers import CgroupResolver
CAP_DAC_READ_SEARCH, LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522  # linux/capability.h
header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct: effective, permitted, inheritable
libc = ctypes.CDLL(None, use_errno=True)
assert libc.capget(header, data) == 0
data[0] &= ~(1 << CAP_DAC_READ_SEARCH)  # effective only: as the DaemonSet runs (no such cap)
assert libc.capset(header, data) == 0
resolver = CgroupResolver(warn=None)
print(resolver.path(int(sys.argv[1])), resolver.use_handles, resolver.scans)
"""


def test_without_cap_dac_read_search_the_resolver_rescans(hierarchy) -> None:
    """open_by_handle_at(2) needs CAP_DAC_READ_SEARCH, which the DaemonSet does not grant: the
    resolver turns handles off at the refusal and finds the cgroup by a rescan."""
    point, parent = hierarchy
    path = f"{parent}/{CRI}"
    cgroup_id = cgroup_id_of(str(point / path.lstrip("/")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    result = subprocess.run([sys.executable, "-c", WITHOUT_DAC_READ_SEARCH, str(cgroup_id)],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [path, "False", "1"]


IN_A_CGROUP_NAMESPACE = r"""
import ctypes, os, sys, tempfile
from sigscope.containers import CgroupResolver, cgroup2_mount, proc_cgroup_fallback
CLONE_NEWNS, CLONE_NEWCGROUP = 0x00020000, 0x02000000  # linux/sched.h
MS_REC, MS_PRIVATE = 0x4000, 0x40000                    # linux/mount.h
libc = ctypes.CDLL(None, use_errno=True)
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
# As a container runtime does: a cgroup namespace rooted at our cgroup, a mount namespace,
# and the container's own cgroup2 mount (it shows only the namespace's subtree).
assert libc.unshare(CLONE_NEWNS | CLONE_NEWCGROUP) == 0, os.strerror(ctypes.get_errno())
assert libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
own = tempfile.mkdtemp()
assert libc.mount(b"cgroup2", own.encode(), b"cgroup2", 0, None) == 0
try:
    mount = cgroup2_mount()
    resolver = CgroupResolver(warn=None)
    print(mount.root, proc_cgroup_fallback(os.getpid()), resolver.path(int(sys.argv[2])))
finally:
    libc.umount2(own.encode(), 0)
    os.rmdir(own)
"""


def test_in_a_cgroup_namespace_the_host_hierarchy_is_read(hierarchy) -> None:
    """A process in its own cgroup namespace (a pod's container) with its own cgroup2 mount
    and the host's: mountinfo shows the host's mount root as /../../.. (three levels above the
    namespace root), the resolver reads that mount and names a cgroup by its host path, while
    /proc/self/cgroup is namespace-relative ("/")."""
    point, parent = hierarchy
    group = point / parent.lstrip("/") / DOCKER
    sibling = f"{parent}/{SERVICE}"
    sibling_id = cgroup_id_of(str(point / sibling.lstrip("/")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    result = subprocess.run([sys.executable, "-c", IN_A_CGROUP_NAMESPACE, str(group),
                             str(sibling_id)],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/../../..", "/", sibling]


# --- the outputs: trace JSON and --containers, top and the exporter (issue 14) ----------------

# A container's shell: sends SIGURG (ignored by default) to each pid it reads, says so.
MEMBER = 'while read -r who; do kill -s URG "$who"; echo sent; done'
NAMES = {"namespace": "prod", "pod": "shop", "cri": "app", "docker": "web"}


class Member:
    """A shell moved into the cgroup at `path` before it sends anything."""

    def __init__(self, path: str) -> None:
        from cgroup_fixtures import move

        self.proc = subprocess.Popen(["bash", "-c", MEMBER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        move(self.pid, path)

    def send(self, pid: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{pid}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "sent\n"

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(TIMEOUT) == 0
        self.proc.stdout.close()


def host_root_with_names(root: Path) -> str:
    """A --host-root where the kubelet names the CRI container and docker the other."""
    pods = root / "var/log/pods" / f"{NAMES['namespace']}_{NAMES['pod']}_{POD_UID}"
    (pods / NAMES["cri"]).mkdir(parents=True)
    logs = root / "var/log/containers"
    logs.mkdir(parents=True)
    (logs / f"{NAMES['pod']}_{NAMES['namespace']}_{NAMES['cri']}-{CRI_ID}.log").symlink_to(
        pods / NAMES["cri"] / "0.log")
    config = root / "var/lib/docker/containers" / DOCKER_ID / "config.v2.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"Name": "/" + NAMES["docker"]}))
    return str(root)


@pytest.fixture
def two_containers(tmp_path: Path):
    """(docker member, CRI member, their (path, id)s, --host-root): a docker container and a
    burstable pod's containerd container, each with a shell in it."""
    from cgroup_fixtures import made_cgroup, unique_top

    parent = unique_top()
    with made_cgroup(f"{parent}/{DOCKER}") as docker, made_cgroup(f"{parent}/{CRI}") as cri:
        members = [Member(docker[0]), Member(cri[0])]
        try:
            yield members[0], members[1], docker, cri, host_root_with_names(tmp_path)
        finally:
            for member in members:
                member.stop()


def exchange(docker: Member, cri: Member) -> None:
    """container -> container, host -> container, container -> host."""
    docker.send(cri.pid)
    os.kill(docker.pid, 23)  # SIGURG
    cri.send(os.getpid())


def host_is_outside_any_container() -> None:
    from sigscope.model.container import parse_cgroup_path

    own = proc_cgroup_fallback(os.getpid())
    assert own is not None
    if parse_cgroup_path(own).container_id is not None:
        pytest.skip("the test runs inside a container: its own side names one")


def test_trace_json_and_columns_carry_both_sides_containers(two_containers) -> None:
    from test_trace_cli import CliTrace

    host_is_outside_any_container()
    docker, cri, (docker_path, docker_id), (cri_path, cri_id), host_root = two_containers
    me = os.getpid()
    pids = f"{docker.pid},{cri.pid},{me}"
    json_run = CliTrace("-j", "-s", "URG", "-p", pids, "--host-root", host_root)
    text_run = CliTrace("--containers", "-s", "URG", "-p", pids, "--host-root", host_root)
    exchange(docker, cri)
    json_run.wait_lines(3)
    text_run.wait_lines(4)  # the header and three records
    status, lines, err = json_run.finish()
    assert status == 0 and len(err) == 1, err  # the summary only: no "unavailable" line
    status, text, text_err = text_run.finish()
    assert status == 0 and len(text_err) == 1, text_err

    records = [json.loads(line) for line in lines]
    assert [(r["sender"]["pid"], r["target"]["pid"]) for r in records] == [
        (docker.pid, cri.pid), (me, docker.pid), (cri.pid, me)]
    to_cri, to_docker, to_host = records
    cri_context = {
        "cgroup_id": cri_id, "cgroup_path": cri_path, "runtime": "containerd",
        "container_id": CRI_ID, "monitor_of": None, "pod_uid": POD_UID, "qos": "burstable",
        "unit": f"cri-containerd-{CRI_ID}.scope", "container_name": NAMES["cri"],
        "pod_name": NAMES["pod"], "pod_namespace": NAMES["namespace"]}
    docker_context = {
        "cgroup_id": docker_id, "cgroup_path": docker_path, "runtime": "docker",
        "container_id": DOCKER_ID, "monitor_of": None, "pod_uid": None, "qos": None,
        "unit": f"docker-{DOCKER_ID}.scope", "container_name": NAMES["docker"],
        "pod_name": None, "pod_namespace": None}
    assert to_cri["sender"]["container"] == docker_context
    assert to_cri["target"]["container"] == cri_context
    assert to_docker["target"]["container"] == docker_context
    assert to_host["sender"]["container"] == cri_context
    # the test's own side: its cgroup, in no container
    own = proc_cgroup_fallback(me)
    for side in (to_docker["sender"], to_host["target"]):
        assert side["container"]["cgroup_path"] == own
        assert side["container"]["container_id"] is None
        assert side["container"]["cgroup_id"] == side["cgroup_id"]

    header, *rows = text
    cells = [(row[header.index(" CONTAINER") + 1:].split()[0],
              row[header.index("TCONTAINER"):].strip()) for row in rows]
    named_cri = f"{NAMES['namespace']}/{NAMES['pod']}/{NAMES['cri']}"
    assert cells == [(NAMES["docker"], named_cri), ("-", NAMES["docker"]), (named_cri, "-")]


def test_trace_columns_without_names_show_the_short_id(two_containers) -> None:
    from test_trace_cli import CliTrace

    host_is_outside_any_container()
    docker, cri, _docker, _cri, _host_root = two_containers
    run = CliTrace("--containers", "--fate", "-s", "URG", "-p", f"{docker.pid}")
    docker.send(cri.pid)
    run.wait_lines(2)
    status, text, err = run.finish()
    assert status == 0, err
    header, row = text[0], text[1]
    assert row[header.index(" CONTAINER") + 1:].split()[0] == DOCKER_ID[:12]
    assert row[header.index("TCONTAINER"):].split()[0] == CRI_ID[:12]


def test_top_and_the_exporter_label_by_container_and_pod(two_containers) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from top_workload import TopProcess

    host_is_outside_any_container()
    docker, cri, _docker, (_cri_path, cri_id), host_root = two_containers
    me = os.getpid()
    running = TopProcess("-s", "URG", "-p", f"{docker.pid},{cri.pid},{me}", "--containers",
                         "-j", "-i", "0.2", "--host-root", host_root,
                         "--prometheus", "127.0.0.1:0",
                         "--labels", "signal,sender_container,target_container,pod_uid")
    try:
        exchange(docker, cri)
        url = running.tracing_line.split("metrics at ", 1)[1].split(")", 1)[0]
        with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
            text = reply.read().decode()
    finally:
        running.proc.send_signal(signal.SIGINT)
    status, intervals, err = running.finish()
    assert status == 0, err
    named_cri = f"{NAMES['namespace']}/{NAMES['pod']}/{NAMES['cri']}"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    scraped = {(s.labels["sender_container"], s.labels["target_container"],
                s.labels["pod_uid"]): s.value
               for s in families["sigscope_signals"].samples
               if s.name == "sigscope_signals_total" and s.labels["signal"] == "SIGURG"}
    assert scraped == {(NAMES["docker"], named_cri, POD_UID): 1.0,
                       ("", NAMES["docker"], ""): 1.0,
                       (named_cri, "", ""): 1.0}
    rows = [row for interval in intervals for row in interval["rows"]]
    got = sorted(((row["sender"]["container"] or {}).get("container_id") or "",
                  (row["target"]["container"] or {}).get("container_id") or "", row["count"])
                 for row in rows)
    assert got == sorted([(DOCKER_ID, CRI_ID, 1), ("", DOCKER_ID, 1), (CRI_ID, "", 1)])
    (to_cri,) = [row for row in rows if row["target"]["pid"] == cri.pid]
    assert to_cri["target"]["container"]["cgroup_id"] == cri_id
    assert to_cri["target"]["container"]["pod_uid"] == POD_UID
