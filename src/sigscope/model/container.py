"""Container context parsed from a cgroup v2 path: the runtime, the container id, the pod UID and
QoS class, the systemd unit. Pure string work, no I/O (``sigscope.containers`` finds the paths).

A path is relative to the cgroup v2 root, as in ``/proc/<pid>/cgroup``'s ``0::`` line, e.g.
``/system.slice/docker-<64 hex>.scope``. Its components are read from the leaf up: the nearest
component that names a container is the container the process runs in (so docker-in-docker or
a systemd inside a container report the innermost one); components below it are cgroups the
container made for itself. The patterns, as the runtimes and the kubelet name their cgroups:

==========================================  ===========  ===================================
component                                   runtime      meaning
==========================================  ===========  ===================================
``docker-<64hex>.scope``                    docker       container (systemd cgroup driver)
``<64hex>`` under a ``docker`` component    docker       container (cgroupfs driver:
                                                         ``/docker/<64hex>``)
``cri-containerd-<64hex>.scope``            containerd   container (CRI plugin, systemd)
``nerdctl-<64hex>.scope``                   containerd   container (nerdctl, systemd)
``crio-<64hex>.scope``, ``crio-<64hex>``    cri-o        container (systemd / cgroupfs)
``crio-conmon-<64hex>[.scope]``             cri-o        conmon, the monitor of that
                                                         container (``monitor_of``), not it
``libpod-<64hex>[.scope]``                  podman       container
``libpod-conmon-<64hex>[.scope]``           podman       conmon of that container
``<64hex>`` under a pod component           cri          container of a CRI runtime with the
                                                         cgroupfs driver (containerd or CRI-O:
                                                         the path does not say which)
``<64hex>`` anywhere else                   None         a container id of an unnamed runtime
``...-pod<uid>.slice``                      (pod)        kubelet, systemd driver: the pod UID
                                                         with ``_`` for ``-``; QoS from
                                                         ``kubepods-burstable-pod...``,
                                                         ``kubepods-besteffort-pod...``, and
                                                         ``kubepods-pod...`` = guaranteed
``pod<uid>`` under ``kubepods``             (pod)        kubelet, cgroupfs driver:
                                                         ``/kubepods/<qos>/pod<uid>``,
                                                         ``/kubepods/pod<uid>`` = guaranteed
``*.service``, ``*.scope`` (leaf-most)      (unit)       the systemd unit, always reported
==========================================  ===========  ===================================

A pod UID is a UUID (8-4-4-4-12 hex) or, for a static pod, 32 hex digits (the kubelet's hash of
the manifest). The kubelet's own prefix (``--cgroup-root``, e.g. ``kubelet.slice/kubelet-
kubepods.slice``) does not matter: the pod component is matched by its own name. Anything else
parses to no container and no pod (None), never a guess.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The runtime names of ContainerContext.runtime ("cri": a CRI runtime the path does not name).
RUNTIMES = ("docker", "containerd", "cri-o", "podman", "cri")
# The Kubernetes QoS classes, as the kubelet spells its cgroups (the API's "Guaranteed", ...).
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

_HEX64 = r"[0-9a-f]{64}"
# prefix of a systemd scope (or a cgroupfs directory) -> (runtime, is the monitor)
_PREFIXED = re.compile(
    r"^(?P<prefix>docker|cri-containerd|nerdctl|crio-conmon|crio|libpod-conmon|libpod)"
    rf"-(?P<id>{_HEX64})(?:\.scope)?$")
_PREFIX_RUNTIME = {
    "docker": ("docker", False), "cri-containerd": ("containerd", False),
    "nerdctl": ("containerd", False), "crio": ("cri-o", False), "crio-conmon": ("cri-o", True),
    "libpod": ("podman", False), "libpod-conmon": ("podman", True),
}
_BARE_ID = re.compile(rf"^{_HEX64}$")
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# systemd driver: kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice, and with a
# --cgroup-root prefix kubelet-kubepods-besteffort-pod<uid>.slice
_POD_SLICE = re.compile(rf"(?:^|-)kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>{_UID})"
                        r"\.slice$")
_POD_DIR = re.compile(rf"^pod(?P<uid>{_UID})$")
_UNIT = re.compile(r"^.+\.(?:service|scope)$")


class ContainerContext(NamedTuple):
    """What a cgroup v2 path says about the processes in it (every field None when it says
    nothing of that kind).

    ``cgroup_path``: the path parsed. ``runtime``: one of ``RUNTIMES``. ``container_id``: 64
    lowercase hex digits. ``monitor_of``: for a conmon cgroup, the id of the container it
    monitors (``container_id`` is then None: conmon is not in the container). ``pod_uid``: the
    pod's UID with dashes (or 32 hex for a static pod). ``qos``: one of ``QOS_CLASSES``.
    ``unit``: the leaf-most systemd ``.service`` or ``.scope`` component.
    """

    cgroup_path: str
    runtime: str | None = None
    container_id: str | None = None
    monitor_of: str | None = None
    pod_uid: str | None = None
    qos: str | None = None
    unit: str | None = None

    @property
    def in_container(self) -> bool:
        return self.container_id is not None

    def to_dict(self) -> dict[str, str | None]:
        """The fields by name (JSON output)."""
        return dict(self._asdict())


def _pod_of(parts: list[str]) -> tuple[str | None, str | None, int]:
    """(pod uid, qos, index of the pod component) of the leaf-most pod component, or (None,
    None, -1)."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        match = _POD_SLICE.search(part)
        if match:
            uid = match["uid"].replace("_", "-")
            return uid, match["qos"] or "guaranteed", index
        match = _POD_DIR.match(part)
        if match and "kubepods" in parts[:index]:
            parent = parts[index - 1]
            qos = parent if parent in ("burstable", "besteffort") else "guaranteed"
            return match["uid"], qos, index
    return None, None, -1


def parse_cgroup_path(path: str) -> ContainerContext:
    """The ContainerContext of one cgroup v2 path (``/``-separated, relative to the v2 root;
    a leading ``/`` is optional). Never raises: a path no pattern fits gives a context whose
    fields are None but ``cgroup_path`` (and ``unit`` where a component is one)."""
    parts = [part for part in path.split("/") if part]
    pod_uid, qos, pod_index = _pod_of(parts)
    runtime = container_id = monitor_of = unit = None
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        if unit is None and _UNIT.match(part):
            unit = part
        if container_id is not None or monitor_of is not None:
            continue
        match = _PREFIXED.match(part)
        if match:
            runtime, monitor = _PREFIX_RUNTIME[match["prefix"]]
            if monitor:
                monitor_of = match["id"]
            else:
                container_id = match["id"]
            continue
        if _BARE_ID.match(part):
            container_id = part
            if index > 0 and parts[index - 1] == "docker":
                runtime = "docker"
            elif index > pod_index >= 0:
                runtime = "cri"
    return ContainerContext(cgroup_path="/" + "/".join(parts), runtime=runtime,
                            container_id=container_id, monitor_of=monitor_of, pod_uid=pod_uid,
                            qos=qos, unit=unit)
