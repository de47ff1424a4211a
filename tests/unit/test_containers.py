"""Container context from cgroup v2 paths (model/container.py) and the user-space resolver's
parts that need no root (containers.py): mountinfo, the cache and rescan policy over a plain
directory tree, local names from kubelet/docker files, the NSpid fallback parser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sigscope.containers import (
    CgroupMount,
    CgroupResolver,
    LocalNames,
    choose_mount,
    describe,
    parse_mountinfo,
    parse_nspid,
    proc_cgroup_fallback,
)
from sigscope.model.container import QOS_CLASSES, RUNTIMES, ContainerContext, parse_cgroup_path

C1 = "3f4e1b2a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
C2 = "a" * 63 + "b"
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UID_ = UID.replace("-", "_")
STATIC_UID = "4d4ff0bc5c4a9dcdfe26ad0f0e6d3bd3"


def ctx(path: str, **fields: str | None) -> ContainerContext:
    return ContainerContext(cgroup_path=path, **fields)  # type: ignore[arg-type]


CASES = {
    # docker
    "docker systemd": (f"/system.slice/docker-{C1}.scope",
                       dict(runtime="docker", container_id=C1, unit=f"docker-{C1}.scope")),
    "docker cgroupfs": (f"/docker/{C1}", dict(runtime="docker", container_id=C1)),
    "docker rootless": (f"/user.slice/user-1000.slice/user@1000.service/app.slice/"
                        f"docker-{C1}.scope",
                        dict(runtime="docker", container_id=C1, unit=f"docker-{C1}.scope")),
    "docker in docker": (f"/system.slice/docker-{C1}.scope/docker/{C2}",
                         dict(runtime="docker", container_id=C2, unit=f"docker-{C1}.scope")),
    "systemd inside a container": (f"/system.slice/docker-{C1}.scope/system.slice/cron.service",
                                   dict(runtime="docker", container_id=C1, unit="cron.service")),
    # containerd / CRI
    "containerd burstable": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{C1}.scope",
        dict(runtime="containerd", container_id=C1, pod_uid=UID, qos="burstable",
             unit=f"cri-containerd-{C1}.scope")),
    "containerd besteffort": (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"cri-containerd-{C1}.scope",
        dict(runtime="containerd", container_id=C1, pod_uid=UID, qos="besteffort",
             unit=f"cri-containerd-{C1}.scope")),
    "containerd guaranteed": (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{C1}.scope",
        dict(runtime="containerd", container_id=C1, pod_uid=UID, qos="guaranteed",
             unit=f"cri-containerd-{C1}.scope")),
    "static pod uid": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
        f"cri-containerd-{C1}.scope",
        dict(runtime="containerd", container_id=C1, pod_uid=STATIC_UID, qos="burstable",
             unit=f"cri-containerd-{C1}.scope")),
    "kubelet cgroup root (kind)": (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{C1}.scope",
        dict(runtime="containerd", container_id=C1, pod_uid=UID, qos="besteffort",
             unit=f"cri-containerd-{C1}.scope")),
    "cri cgroupfs burstable": (f"/kubepods/burstable/pod{UID}/{C1}",
                               dict(runtime="cri", container_id=C1, pod_uid=UID,
                                    qos="burstable")),
    "cri cgroupfs guaranteed": (f"/kubepods/pod{UID}/{C1}",
                                dict(runtime="cri", container_id=C1, pod_uid=UID,
                                     qos="guaranteed")),
    "pod cgroup itself": (f"/kubepods.slice/kubepods-burstable.slice/"
                          f"kubepods-burstable-pod{UID_}.slice",
                          dict(pod_uid=UID, qos="burstable")),
    "qos slice, no pod": ("/kubepods.slice/kubepods-burstable.slice", {}),
    # CRI-O
    "crio systemd": (f"/kubepods.slice/kubepods-besteffort.slice/"
                     f"kubepods-besteffort-pod{UID_}.slice/crio-{C1}.scope",
                     dict(runtime="cri-o", container_id=C1, pod_uid=UID, qos="besteffort",
                          unit=f"crio-{C1}.scope")),
    "crio conmon": (f"/kubepods.slice/kubepods-besteffort.slice/"
                    f"kubepods-besteffort-pod{UID_}.slice/crio-conmon-{C1}.scope",
                    dict(runtime="cri-o", monitor_of=C1, pod_uid=UID, qos="besteffort",
                         unit=f"crio-conmon-{C1}.scope")),
    "crio cgroupfs": (f"/kubepods/besteffort/pod{UID}/crio-{C1}",
                      dict(runtime="cri-o", container_id=C1, pod_uid=UID, qos="besteffort")),
    "crio cgroupfs conmon": (f"/kubepods/besteffort/pod{UID}/crio-conmon-{C1}",
                             dict(runtime="cri-o", monitor_of=C1, pod_uid=UID,
                                  qos="besteffort")),
    "crio nested container cgroup": (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{C1}.scope/container",
        dict(runtime="cri-o", container_id=C1, pod_uid=UID, qos="guaranteed",
             unit=f"crio-{C1}.scope")),
    # podman
    "podman": (f"/machine.slice/libpod-{C1}.scope",
               dict(runtime="podman", container_id=C1, unit=f"libpod-{C1}.scope")),
    "podman nested": (f"/machine.slice/libpod-{C1}.scope/container",
                      dict(runtime="podman", container_id=C1, unit=f"libpod-{C1}.scope")),
    "podman conmon": (f"/machine.slice/libpod-conmon-{C1}.scope",
                      dict(runtime="podman", monitor_of=C1, unit=f"libpod-conmon-{C1}.scope")),
    "podman rootless": (f"/user.slice/user-1000.slice/user@1000.service/user.slice/"
                        f"libpod-{C1}.scope",
                        dict(runtime="podman", container_id=C1, unit=f"libpod-{C1}.scope")),
    "podman cgroupfs": (f"/libpod_parent/libpod-{C1}", dict(runtime="podman", container_id=C1)),
    # not containers
    "system service": ("/system.slice/cron.service", dict(unit="cron.service")),
    "templated service": ("/system.slice/system-getty.slice/getty@tty1.service",
                          dict(unit="getty@tty1.service")),
    "session scope": ("/user.slice/user-1000.slice/session-3.scope", dict(unit="session-3.scope")),
    "docker daemon": ("/system.slice/docker.service", dict(unit="docker.service")),
    "containerd daemon": ("/system.slice/containerd.service", dict(unit="containerd.service")),
    "init scope": ("/init.scope", dict(unit="init.scope")),
    "root": ("/", {}),
    "bare hex elsewhere": (f"/default/{C1}", dict(container_id=C1)),
    "short hex is no id": ("/docker/3f4e1b2a9c8d", {}),
    "upper-case hex is no id": (f"/docker/{C1.upper()}", {}),
    "pod outside kubepods is no pod": (f"/pod{UID}", {}),
    "docker- prefix without an id": ("/system.slice/docker-compose.scope",
                                     dict(unit="docker-compose.scope")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parse_cgroup_path(name: str) -> None:
    path, fields = CASES[name]
    assert parse_cgroup_path(path) == ctx(path, **fields)


def test_parse_normalises_slashes_and_never_raises() -> None:
    assert parse_cgroup_path(f"system.slice//docker-{C1}.scope/").cgroup_path == \
        f"/system.slice/docker-{C1}.scope"
    for junk in ("", "////", "\x00\n", "-" * 300, "pod" + "-" * 36):
        parse_cgroup_path(junk)


def test_context_vocabulary_and_dict() -> None:
    parsed = [parse_cgroup_path(path) for path, _ in CASES.values()]
    assert {c.runtime for c in parsed} - {None} == set(RUNTIMES)
    assert {c.qos for c in parsed} - {None} == set(QOS_CLASSES)
    context = parse_cgroup_path(CASES["containerd burstable"][0])
    assert context.in_container
    assert json.loads(json.dumps(context.to_dict()))["pod_uid"] == UID
    assert not parse_cgroup_path(CASES["crio conmon"][0]).in_container


# --- mountinfo ---------------------------------------------------------------------------------

HYBRID = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 \
rw,nsdelegate
"""
PURE_V2 = "33 24 0:29 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 " \
          "cgroup2 rw,nsdelegate,memory_recursiveprot\n"
V1_ONLY = "\n".join(HYBRID.splitlines()[:4]) + "\n"


def test_mountinfo_hybrid_pure_and_v1_only() -> None:
    assert choose_mount(parse_mountinfo(HYBRID.replace("\\\n", ""))) == \
        CgroupMount("/sys/fs/cgroup/unified", "/")
    assert choose_mount(parse_mountinfo(PURE_V2)) == CgroupMount("/sys/fs/cgroup", "/")
    assert parse_mountinfo(V1_ONLY) == []
    assert choose_mount([]) is None


def test_mountinfo_prefers_the_whole_hierarchy_and_unescapes() -> None:
    text = ("50 24 0:29 /kubepods.slice/pod /host\\040cg rw - cgroup2 cgroup2 rw\n"
            "51 24 0:29 / /mnt/cg\\040two rw master:3 - cgroup2 cgroup2 rw\n")
    mounts = parse_mountinfo(text)
    assert mounts[0] == CgroupMount("/host cg", "/kubepods.slice/pod")
    assert choose_mount(mounts) == CgroupMount("/mnt/cg two", "/")


def test_resolver_mount_argument() -> None:
    with pytest.raises(ValueError, match="mount"):
        CgroupResolver("/sys/fs/cgroup")


def test_mountinfo_in_a_cgroup_namespace_prefers_the_host_hierarchy() -> None:
    """In a pod with its own cgroup namespace: /sys/fs/cgroup is the pod's own cgroup (root
    ``/``); a hostPath mount of the host's hierarchy shows as ``/../..`` and sees more."""
    text = ("60 50 0:29 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
            "61 50 0:29 /../.. /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n"
            "62 50 0:29 /.. /mnt/half ro - cgroup2 cgroup2 rw\n")
    assert choose_mount(parse_mountinfo(text)) == CgroupMount("/host/sys/fs/cgroup", "/../..")
    below = ("70 50 0:29 /kubepods.slice /a rw - cgroup2 cgroup2 rw\n"
             "71 50 0:29 /kubepods.slice/x /b rw - cgroup2 cgroup2 rw\n")
    assert choose_mount(parse_mountinfo(below)) == CgroupMount("/a", "/kubepods.slice")


def test_unavailable_says_so_once() -> None:
    said: list[str] = []
    resolver = CgroupResolver(None, warn=said.append)
    assert not resolver.available
    assert resolver.warn_if_unavailable() and resolver.warn_if_unavailable()
    assert len(said) == 1 and "container context is unavailable" in said[0]
    assert "\n" not in said[0]
    assert resolver.path(1) is None and resolver.context(1) is None and resolver.rescan() == 0
    assert resolver.ids_of_container("ab") == {}
    with pytest.raises(OSError, match="no cgroup v2 hierarchy"):
        resolver.id_of("/system.slice")


# --- the resolver's cache and rescan, over a plain directory tree ------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tree_resolver(root: Path, clock: Clock, **kw: int) -> CgroupResolver:
    return CgroupResolver(CgroupMount(str(root), "/"), use_handles=False, rescan_interval=1.0,
                          clock=clock, warn=None, **kw)


def test_resolver_rescans_on_a_miss_rate_limited_and_keeps_vanished(tmp_path: Path) -> None:
    clock = Clock()
    first = tmp_path / "system.slice" / f"docker-{C1}.scope"
    first.mkdir(parents=True)
    resolver = tree_resolver(tmp_path, clock)
    assert not resolver.warn_if_unavailable()
    first_id = first.stat().st_ino
    assert resolver.path(first_id) == f"/system.slice/docker-{C1}.scope"
    assert resolver.path(tmp_path.stat().st_ino) == "/"
    assert resolver.scans == 1
    context = resolver.context(first_id)
    assert context is not None and (context.runtime, context.container_id) == ("docker", C1)

    second = tmp_path / "kubepods" / "besteffort" / f"pod{UID}" / C2
    second.mkdir(parents=True)
    second_id = second.stat().st_ino
    assert resolver.path(second_id) is None  # within the interval: no rescan, no guess
    assert resolver.scans == 1
    clock.now += 1.0
    assert resolver.path(second_id) == f"/kubepods/besteffort/pod{UID}/{C2}"
    assert resolver.scans == 2
    context = resolver.context(second_id)
    assert context is not None and (context.runtime, context.pod_uid) == ("cri", UID)

    first.rmdir()
    clock.now += 5.0
    assert resolver.path(first_id) == f"/system.slice/docker-{C1}.scope"  # from the cache
    assert resolver.scans == 2
    unknown = max(first_id, second_id) + 10_000
    assert resolver.path(unknown) is None
    assert resolver.scans == 3
    assert resolver.path(unknown) is None
    assert resolver.scans == 3


def test_resolver_bounds_scan_and_cache(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    clock = Clock()
    resolver = tree_resolver(tmp_path, clock, max_scan=4, max_cached=3)
    assert resolver.rescan() == 4 and resolver.scan_truncated
    assert len(resolver._paths) == 3
    resolver.max_scan = 100
    assert resolver.rescan() == 10 and not resolver.scan_truncated


# --- local names -------------------------------------------------------------------------------

def test_local_names_from_kubelet_logs_and_docker(tmp_path: Path) -> None:
    pods = tmp_path / "var/log/pods"
    pod_dir = pods / f"kube-system_coredns-5d78c9869d-x2x7k_{UID}"
    for container in ("coredns", "sidecar"):
        (pod_dir / container).mkdir(parents=True)
        (pod_dir / container / "0.log").write_text("")
    (pods / "not-a-pod-dir").mkdir()
    static_dir = pods / f"kube-system_etcd-node1_{STATIC_UID}" / "etcd"
    static_dir.mkdir(parents=True)
    logs = tmp_path / "var/log/containers"
    logs.mkdir(parents=True)
    os.symlink(pod_dir / "coredns" / "0.log",
               logs / f"coredns-5d78c9869d-x2x7k_kube-system_coredns-{C1}.log")
    docker = tmp_path / "var/lib/docker/containers" / C2
    docker.mkdir(parents=True)
    (docker / "config.v2.json").write_text(json.dumps({"Name": "/web-1", "ID": C2}))
    broken = tmp_path / "var/lib/docker/containers" / ("c" * 64)
    broken.mkdir()
    (broken / "config.v2.json").write_text("{not json")

    clock = Clock()
    names = LocalNames(str(tmp_path), refresh_interval=5.0, clock=clock)
    assert names.pod(UID) == ("kube-system", "coredns-5d78c9869d-x2x7k", ("coredns", "sidecar"))
    assert names.pod(STATIC_UID) == ("kube-system", "etcd-node1", ("etcd",))
    found = names.container(C1)
    assert found is not None
    assert (found.name, found.pod, found.namespace) == ("coredns", "coredns-5d78c9869d-x2x7k",
                                                        "kube-system")
    assert names.container(C2) == ("web-1", None, None, str(docker / "config.v2.json"))
    assert names.container("c" * 64) is None
    assert names.container("../../etc") is None

    late = tmp_path / "var/lib/docker/containers" / ("f" * 64)
    assert names.container("f" * 64) is None
    late.mkdir()
    (late / "config.v2.json").write_text(json.dumps({"Name": "/late"}))
    assert names.container("f" * 64) is None  # not looked for again before refresh_interval
    clock.now += 5.0
    found = names.container("f" * 64)
    assert found is not None and found.name == "late"

    other = "0" * 63 + "1"
    os.symlink(pod_dir / "sidecar" / "0.log",
               logs / f"coredns-5d78c9869d-x2x7k_kube-system_sidecar-{other}.log")
    assert names.container(other) is None  # read less than refresh_interval ago
    clock.now += 5.0
    assert names.container(other) is not None


def test_local_names_absent_sources(tmp_path: Path) -> None:
    names = LocalNames(str(tmp_path))
    assert names.pod(UID) is None and names.container(C1) is None


def test_parse_nspid() -> None:
    status = "Name:\tsleep\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nNSpid:\t4242\t17\t1\n"
    assert parse_nspid(status) == (4242, 17, 1)
    assert parse_nspid("Name:\tx\nPid:\t5\n") is None


def test_local_names_from_containers_storage(tmp_path: Path) -> None:
    storage = tmp_path / "var/lib/containers/storage/overlay-containers"
    storage.mkdir(parents=True)
    crio_sandbox = "d" * 64
    records = [
        {"id": C1, "names": ["web"], "image": "x"},                       # podman
        {"id": C2, "names": [f"k8s_app_api-7f9c_prod_{UID}_2"]},          # CRI-O container
        {"id": crio_sandbox, "names": [f"k8s_POD_api-7f9c_prod_{UID}_0"]},
        {"id": "short", "names": ["bad"]}, {"id": "e" * 64, "names": []}, "junk",
    ]
    (storage / "containers.json").write_text(json.dumps(records))
    names = LocalNames(str(tmp_path))
    source = str(storage / "containers.json")
    assert names.container(C1) == ("web", None, None, source)
    assert names.container(C2) == ("app", "api-7f9c", "prod", source)
    assert names.container(crio_sandbox) == ("POD", "api-7f9c", "prod", source)
    assert names.container("e" * 64) is None
    (storage / "containers.json").write_text("{}")
    assert LocalNames(str(tmp_path)).container(C1) is None


def test_describe_merges_context_and_names(tmp_path: Path) -> None:
    path = (tmp_path / "kubepods.slice" / "kubepods-burstable.slice" /
            f"kubepods-burstable-pod{UID_}.slice")
    (path / f"cri-containerd-{C1}.scope").mkdir(parents=True)
    (path / f"cri-containerd-{C2}.scope").mkdir()
    logs = tmp_path / "var/log/containers"
    logs.mkdir(parents=True)
    (logs / f"api-0_prod_app-{C1}.log").write_text("")
    (tmp_path / "var/log/pods" / f"prod_api-0_{UID}" / "app").mkdir(parents=True)
    resolver = tree_resolver(tmp_path, Clock())
    names = LocalNames(str(tmp_path))
    first = describe(resolver, (path / f"cri-containerd-{C1}.scope").stat().st_ino, names)
    assert first is not None
    assert (first["container_id"], first["container_name"], first["pod_name"],
            first["pod_namespace"], first["pod_uid"]) == (C1, "app", "api-0", "prod", UID)
    # a container the logs do not name (a pause container): the pod's names still
    second_id = (path / f"cri-containerd-{C2}.scope").stat().st_ino
    second = describe(resolver, second_id, names)
    assert second is not None
    assert (second["container_name"], second["pod_name"]) == (None, "api-0")
    bare = describe(resolver, second_id)
    assert bare is not None and bare["pod_name"] is None and bare["cgroup_id"] == second_id
    assert describe(resolver, 1 << 60, names) is None
    json.dumps(first)


def test_proc_cgroup_fallback(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(
        f"12:pids:/docker/{C1}\n1:name=systemd:/docker/{C1}\n0::/system.slice/docker-{C1}.scope\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "cgroup").write_text("4:memory:/\n")
    assert proc_cgroup_fallback(7, str(tmp_path)) == f"/system.slice/docker-{C1}.scope"
    assert proc_cgroup_fallback(8, str(tmp_path)) is None
    assert proc_cgroup_fallback(9, str(tmp_path)) is None
