"""deploy/: the Kubernetes manifests validate against real API schemas, agree with each other and
with the code (port, path, --labels), and the Prometheus scrape config is sane."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from sigscope import __version__
from sigscope.outputs.prometheus import METRICS_PATH, parse_labels, parse_listen_address

yaml = pytest.importorskip("yaml", reason="pip install PyYAML (in the 'test' extra)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (in the 'test' extra)"
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The newest schemas the package ships, and an older minor still widely run.
KUBERNETES_VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]


def load_documents(path: Path) -> list:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def kubernetes_objects() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in load_documents(path):
            if isinstance(doc, dict) and "kind" in doc:
                found.append((path.name, doc))
    return found


def the_object(kind: str) -> dict:
    matches = [doc for _, doc in kubernetes_objects() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind} in deploy/, found {len(matches)}"
    return matches[0]


def daemonset_container() -> dict:
    containers = the_object("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def option_value(args: list[str], option: str) -> str:
    assert args.count(option) == 1, f"{option} must appear once in {args}"
    return args[args.index(option) + 1]


def prometheus_config() -> dict:
    documents = load_documents(DEPLOY / "prometheus-scrape.yaml")
    assert len(documents) == 1
    return documents[0]


def test_deploy_holds_the_expected_objects() -> None:
    kinds = sorted(doc["kind"] for _, doc in kubernetes_objects())
    assert kinds == ["DaemonSet", "Namespace"]
    # Every YAML document in deploy/ is either a Kubernetes object or the Prometheus config.
    for path in DEPLOY.glob("*.yaml"):
        for doc in load_documents(path):
            assert isinstance(doc, dict)
            assert "kind" in doc or path.name == "prometheus-scrape.yaml"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name_and_doc", kubernetes_objects(), ids=lambda item: f"{item[0]}:{item[1]['kind']}"
)
def test_objects_validate_against_kubernetes_schema(name_and_doc, version) -> None:
    _, doc = name_and_doc
    validated = kubernetes_validate.validate(doc, version, strict=True)
    assert validated == kubernetes_validate.utils.major_minor(version)


def _add_unknown_container_field(ds: dict) -> None:
    ds["spec"]["template"]["spec"]["containers"][0]["port"] = 9567


def _port_as_string(ds: dict) -> None:
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "metrics"


def _drop_selector(ds: dict) -> None:
    del ds["spec"]["selector"]


def _misspell_host_pid(ds: dict) -> None:
    spec = ds["spec"]["template"]["spec"]
    spec["hostPid"] = spec.pop("hostPID")


@pytest.mark.parametrize(
    "break_it", [_add_unknown_container_field, _port_as_string, _drop_selector, _misspell_host_pid]
)
def test_broken_daemonset_fails_validation(break_it) -> None:
    broken = copy.deepcopy(the_object("DaemonSet"))
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_runs_top_with_the_exporter() -> None:
    container = daemonset_container()
    args = container["args"]
    assert container["command"] == ["sigscope"]
    assert args[0] == "top"
    host, port = parse_listen_address(option_value(args, "--prometheus"))
    assert host == "0.0.0.0" and port == 9567
    # The label set must be one the code accepts.
    assert parse_labels(option_value(args, "--labels"))


def test_daemonset_port_annotations_and_probes_agree() -> None:
    ds = the_object("DaemonSet")
    template = ds["spec"]["template"]
    container = daemonset_container()
    _, listen_port = parse_listen_address(option_value(container["args"], "--prometheus"))

    ports = {port["name"]: port for port in container["ports"]}
    assert ports["metrics"]["containerPort"] == listen_port

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(listen_port)
    assert annotations["prometheus.io/path"] == METRICS_PATH

    for probe in ("livenessProbe", "readinessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == METRICS_PATH
        assert http_get["port"] in ("metrics", listen_port)

    assert ds["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


def test_daemonset_can_load_bpf_and_see_node_pids() -> None:
    ds = the_object("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    container = daemonset_container()
    assert pod["hostPID"] is True

    security = container["securityContext"]
    if not security.get("privileged", False):
        assert {"BPF", "PERFMON"} <= set(security["capabilities"]["add"])
        assert security.get("runAsUser", 0) == 0

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/sys/kernel/btf"):
        mount = mounts[path]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == path

    assert {"operator": "Exists"} in pod["tolerations"]
    assert ds["metadata"]["namespace"] == the_object("Namespace")["metadata"]["name"]


def test_daemonset_resources_are_bounded() -> None:
    resources = daemonset_container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_image_names_no_registry_host_and_matches_version() -> None:
    image = daemonset_container()["image"]
    name, _, tag = image.rpartition(":")
    assert "/" not in name, f"image {image!r} must not name a registry"
    assert tag == __version__


def test_containerfile_installs_the_exporter_extra() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    from_lines = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert from_lines and all("/" not in image for image in from_lines)
    assert "[prometheus]" in text
    assert re.search(r"^ENTRYPOINT \[\"sigscope\"\]$", text, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Prometheus scrape config

RELABEL_ACTIONS = {
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_prometheus_config_is_structurally_sane() -> None:
    config = prometheus_config()
    assert set(config) == {"scrape_configs"}
    jobs = config["scrape_configs"]
    assert isinstance(jobs, list) and jobs
    names = [job["job_name"] for job in jobs]
    assert len(names) == len(set(names))
    for job in jobs:
        assert ("kubernetes_sd_configs" in job) != ("static_configs" in job), job["job_name"]
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                assert DURATION.match(job[key]), f"{job['job_name']}: {key}={job[key]!r}"
        for rule in job.get("relabel_configs", []):
            assert rule.get("action", "replace") in RELABEL_ACTIONS
            assert isinstance(rule.get("source_labels", []), list)
            re.compile(rule.get("regex", "(.*)"))
            if rule.get("action", "replace") == "replace":
                assert "target_label" in rule


def _kubernetes_job() -> dict:
    jobs = prometheus_config()["scrape_configs"]
    (job,) = [job for job in jobs if "kubernetes_sd_configs" in job]
    return job


def _relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Just enough of Prometheus's keep/replace relabelling to check our rules (RE2 anchors)."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(
            labels.get(name, "") for name in rule.get("source_labels", [])
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if action == "keep":
            if match is None:
                return None
        elif action == "replace":
            if match is not None:
                replacement = re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1"))
                labels[rule["target_label"]] = match.expand(replacement)
        else:
            raise AssertionError(f"test relabeller does not know action {action!r}")
    return labels


def _pod_target(address: str, port_name: str = "metrics", scrape: str = "true") -> dict:
    return {
        "__address__": address,
        "__metrics_path__": "/metrics",
        "__meta_kubernetes_namespace": "sigscope",
        "__meta_kubernetes_pod_name": "sigscope-abcde",
        "__meta_kubernetes_pod_node_name": "node-1",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "sigscope",
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "9567",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3:9567", "10.1.2.3:9567"),
        ("10.1.2.3", "10.1.2.3:9567"),
        ("[fd00::7]:9567", "[fd00::7]:9567"),
    ],
)
def test_kubernetes_job_targets_the_metrics_port(address, expected) -> None:
    job = _kubernetes_job()
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [
        the_object("Namespace")["metadata"]["name"]
    ]
    labels = _relabel(job["relabel_configs"], _pod_target(address))
    assert labels is not None
    assert labels["__address__"] == expected
    assert labels["__metrics_path__"] == METRICS_PATH
    assert labels["node"] == "node-1"


@pytest.mark.parametrize(
    "target",
    [
        _pod_target("10.1.2.3:8080", port_name="other"),
        _pod_target("10.1.2.3:9567", scrape="false"),
        {**_pod_target("10.1.2.3:9567"), "__meta_kubernetes_pod_label_app_kubernetes_io_name": "x"},
    ],
)
def test_kubernetes_job_drops_other_targets(target) -> None:
    assert _relabel(_kubernetes_job()["relabel_configs"], target) is None


def test_static_job_targets_are_host_port() -> None:
    (job,) = [job for job in prometheus_config()["scrape_configs"] if "static_configs" in job]
    for group in job["static_configs"]:
        for target in group["targets"]:
            host, _, port = target.rpartition(":")
            assert host and port == "9567"


# ---------------------------------------------------------------------------------------------
# Container context (docs/CONTAINERS.md)

CONTEXT_SOURCES = {  # host path -> where the pod sees it (under --host-root)
    "/sys/fs/cgroup": "/host/sys/fs/cgroup",
    "/var/log/pods": "/host/var/log/pods",
    "/var/log/containers": "/host/var/log/containers",
    "/var/lib/docker/containers": "/host/var/lib/docker/containers",
    "/var/lib/containers/storage": "/host/var/lib/containers/storage",
}


def test_daemonset_mounts_the_container_context_sources_read_only() -> None:
    pod = the_object("DaemonSet")["spec"]["template"]["spec"]
    container = daemonset_container()
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    host_root = option_value(container["args"], "--host-root")
    for host_path, mount_path in CONTEXT_SOURCES.items():
        mount = mounts[mount_path]
        assert mount["readOnly"] is True, mount_path
        assert volumes[mount["name"]]["hostPath"]["path"] == host_path
        assert mount_path == host_root + host_path  # LocalNames(root) reads root + /var/...
    # nothing of the host is writable but the pod's own tmpfs
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]
    assert "DAC_READ_SEARCH" not in container["securityContext"]["capabilities"]["add"]


def test_daemonset_asks_for_the_container_labels() -> None:
    from sigscope.cli.main import build_parser
    from sigscope.outputs.prometheus import CONTAINER_LABELS
    from sigscope.top import key_fields

    args = daemonset_container()["args"]
    labels = parse_labels(option_value(args, "--labels"))
    assert CONTAINER_LABELS <= set(labels)
    assert {"sender_cgroup", "target_cgroup"} <= key_fields(labels)  # counted by cgroup id
    assert not {"sender_pid", "target_pid"} & set(labels)  # bounded by containers, not pids
    parsed = build_parser().parse_args(args)
    assert parsed.host_root == "/host" and parsed.max_keys > 0
