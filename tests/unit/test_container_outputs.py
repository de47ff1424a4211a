"""Container context in the outputs (issue 14): the JSON "container" objects, the --containers
columns of trace and top, the exporter's container labels, the count key that holds cgroup ids
only when asked, and a cgroup v1-only host (a fake mountinfo)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from sigscope import top
from sigscope.bpf import asm
from sigscope.cli.main import build_parser, main
from sigscope.containers import (
    UNAVAILABLE,
    CgroupResolver,
    ContainerLookup,
    LocalNames,
    cgroup2_mount,
    container_label,
)
from sigscope.model import record as rec
from sigscope.model.counts import CountRow, Health
from sigscope.model.event import Event
from sigscope.outputs.prometheus import DEFAULT_LABELS, LABEL_NAMES, parse_labels
from sigscope.outputs.trace import CONTAINER_COLUMNS, JsonWriter, TextWriter
from sigscope.programs import common
from sigscope.programs import count as top_probes

DOCKER_ID = "d0" * 32
CRI_ID = "c1" * 32
POD_UID = "0f8e2c4a-1b2c-4d5e-8f90-123456789abc"
SENDER_CGROUP, TARGET_CGROUP, HOST_CGROUP = 1001, 1002, 1003


def _context(path: str, **fields: object) -> dict[str, object]:
    found: dict[str, object] = {
        "cgroup_id": 0, "cgroup_path": path, "runtime": None, "container_id": None,
        "monitor_of": None, "pod_uid": None, "qos": None, "unit": None,
        "container_name": None, "pod_name": None, "pod_namespace": None}
    found.update(fields)
    return found


CONTEXTS = {
    SENDER_CGROUP: _context(f"/system.slice/docker-{DOCKER_ID}.scope", cgroup_id=SENDER_CGROUP,
                            runtime="docker", container_id=DOCKER_ID,
                            unit=f"docker-{DOCKER_ID}.scope"),
    TARGET_CGROUP: _context(
        f"/kubepods.slice/kubepods-pod{POD_UID}.slice/cri-containerd-{CRI_ID}.scope",
        cgroup_id=TARGET_CGROUP, runtime="containerd", container_id=CRI_ID, pod_uid=POD_UID,
        qos="guaranteed", container_name="web\x1b[31m", pod_name="shop", pod_namespace="prod"),
    HOST_CGROUP: _context("/system.slice/cron.service", cgroup_id=HOST_CGROUP,
                          unit="cron.service"),
}


def contexts(cgroup_id: int | None) -> dict[str, object] | None:
    return CONTEXTS.get(cgroup_id or 0)


def event(sender_cgroup: int | None = SENDER_CGROUP, target_cgroup: int | None = TARGET_CGROUP,
          **overrides: object) -> Event:
    fields: dict[str, object] = dict(
        sig=15, via="kill", sender_pid=100, sender_tid=100, sender_comm="runc",
        sender_uid=0, target_pid=200, target_tid=200, target_comm="nginx", arg_pid=200,
        arg_tid=None, arg_pidfd=None, code=0, result=0, outcome="delivered", group=True,
        sender_cgroup=sender_cgroup, target_cgroup=target_cgroup, contexts=contexts)
    fields.update(overrides)
    return Event.of(7, 1_000, 1_764_000_000_000_000_000, **fields)  # type: ignore[arg-type]


# --- JSON and the Python API ------------------------------------------------------------------

def test_json_carries_both_sides_container_objects() -> None:
    e = event()
    d = e.to_dict()
    assert d["sender"]["container"] == CONTEXTS[SENDER_CGROUP]
    assert d["target"]["container"] == CONTEXTS[TARGET_CGROUP]
    assert e.sender_container is CONTEXTS[SENDER_CGROUP]  # the Python API: the same dict
    # the cached-template JSON line is exactly to_dict() (names kept exact, not escaped)
    line = JsonWriter(io.StringIO()).line(e)
    assert json.loads(line) == json.loads(json.dumps(d))
    assert json.loads(line)["target"]["container"]["container_name"] == "web\x1b[31m"


@pytest.mark.parametrize("sender, target", [(None, None), (0, 0), (4242, 4343)],
                         ids=["no-id", "zero", "unresolvable"])
def test_container_is_null_when_the_id_is_unknown_or_unresolvable(sender, target) -> None:
    d = event(sender, target).to_dict()
    assert d["sender"]["container"] is None and d["target"]["container"] is None


def test_container_is_null_without_a_lookup() -> None:
    e = event(contexts=None)
    assert e.sender_container is None and e.to_dict()["target"]["container"] is None
    assert e.sender_cgroup == SENDER_CGROUP  # the kernel's id is kept all the same


def test_container_label_forms() -> None:
    assert container_label(CONTEXTS[SENDER_CGROUP]) == DOCKER_ID[:12]
    assert container_label(CONTEXTS[TARGET_CGROUP]) == "prod/shop/web\x1b[31m"
    assert container_label(CONTEXTS[HOST_CGROUP]) is None
    assert container_label(None) is None
    assert container_label(_context("/x", container_id=DOCKER_ID, container_name="db")) == "db"
    assert container_label(_context("/x", monitor_of=CRI_ID)) == f"conmon:{CRI_ID[:12]}"


# --- trace --containers -----------------------------------------------------------------------

def _cells(line: str, header: str, column: str) -> str:
    start = header.index(column)
    return line[start:].split(" ", 1)[0]


def test_text_columns_are_aligned_and_escaped() -> None:
    out = io.StringIO()
    writer = TextWriter(out, containers=True)
    writer.header()
    writer.events([event(), event(HOST_CGROUP, None)])
    header, first, second = out.getvalue().splitlines()
    assert header.endswith("OUTCOME         CONTAINER                TCONTAINER")
    assert _cells(first, header, "CONTAINER") == DOCKER_ID[:12]
    assert first[header.index("TCONTAINER"):] == "prod/shop/web\\x1b[31m"  # escape.py
    assert "\x1b" not in out.getvalue()
    assert _cells(second, header, "CONTAINER") == "-"
    assert second[header.index("TCONTAINER"):] == "-"
    # the storm path (one template per shape) renders the same line
    assert writer.template(event()) % (7, writer.stamp(1_764_000_000), 0, 1_000) == first


def test_text_without_containers_is_unchanged() -> None:
    plain, asked = io.StringIO(), io.StringIO()
    TextWriter(plain).events([event()])
    TextWriter(asked, containers=True).events([event()])
    assert asked.getvalue().startswith(plain.getvalue().rstrip("\n"))
    assert DOCKER_ID[:12] not in plain.getvalue()


def test_text_columns_work_with_fate() -> None:
    out = io.StringIO()
    writer = TextWriter(out, fate=True, containers=True)
    writer.header()
    writer.events([event(outcome="delivered")])
    header, line = out.getvalue().splitlines()
    names = header.split()
    assert names[-4:] == [*CONTAINER_COLUMNS, "LAT", "FATE"]
    assert _cells(line, header, "CONTAINER") == DOCKER_ID[:12]
    assert _cells(line, header, "TCONTAINER") == "prod/shop/web\\x1b[31m"
    assert line[header.index("FATE"):].strip() == "..."


def test_trace_containers_option_parses() -> None:
    args = build_parser().parse_args(["trace", "--containers", "--fate"])
    assert args.containers and args.fate
    assert not build_parser().parse_args(["trace"]).containers


# --- top and the exporter ---------------------------------------------------------------------

def normalised(text: str) -> str:
    """An asm.dump with record offsets named (``(r7 sender_comm+8)``) and stack offsets taken
    from STACK_USED (``(r10 S-64)``): what the count output emits, whatever the record layout
    and the stack the signal programs use below it."""
    def field(offset: int) -> str:
        start, name = max((rec.offset(n), n) for n in rec.FIELD_NAMES if rec.offset(n) <= offset)
        return f"{name}+{offset - start}"

    text = re.sub(r"\(r7 \+(\d+)\)", lambda m: f"(r7 {field(int(m[1]))})", text)
    text = re.sub(r"r10 (-\d+)\)", lambda m: f"r10 S{int(m[1]) + common.STACK_USED:+d})", text)
    return re.sub(r"\+= (-\d+)$", lambda m: f"+= S{int(m[1]) + common.STACK_USED:+d}", text,
                  flags=re.MULTILINE)


# sha256 of normalised(asm.dump(CountOutput(4, 5, percpu, keep).write(7, Labels()))) before the
# cgroup ids existed: with default labels (and the table's full key) it must not change.
BEFORE = {
    (True, None): "7b0d03351d598edbcb55fd071ce8099b1f3f4738f7203961445b731c7a8c9c05",
    (False, None): "addeb8f4ed4e1934f8ce501bb0d460f1077d5056a370e983f3a820277c612c59",
    (True, "default"): "c05a06bfec311f2d6b6d0e9092fc058a3876d41bffa8f1d30caec2e8a8516883",
    (False, "default"): "54bd81abcd94b113eb8ad91ea90a88107e10213a43bbbbdde3698261eb03884e",
}


@pytest.mark.parametrize("percpu, keep", list(BEFORE), ids=lambda v: str(v))
def test_default_labels_keep_the_key_and_programs_byte_identical(percpu, keep) -> None:
    fields = None if keep is None else top.key_fields(DEFAULT_LABELS)
    counter = top.Counter(keep=fields)
    assert not counter.cgroups
    assert top_probes.key_layout(counter.cgroups).size == top_probes.KEY_SIZE == 64
    assert top_probes.KEY_STRUCT.format == "<IiiIiiQ16s16s"
    output = top_probes.CountOutput(4, 5, percpu, counter.keep, counter.cgroups)
    text = asm.dump(output.write(7, common.Labels()))
    assert hashlib.sha256(normalised(text).encode()).hexdigest() == BEFORE[(percpu, keep)]
    # and nothing of it reads a cgroup id
    assert "cgroup" not in normalised(text)


@pytest.mark.parametrize("labels", [("sender_container",), ("target_container",), ("pod_uid",),
                                    ("signal", "pod_uid")])
def test_a_container_label_puts_the_cgroup_ids_in_the_key(labels) -> None:
    counter = top.Counter(keep=top.key_fields(labels))
    assert counter.cgroups
    layout = top_probes.key_layout(True)
    assert layout.size == 80 and -layout.one_slot <= 512
    text = asm.dump(top_probes.CountOutput(4, 5, True, counter.keep, True).write(
        7, common.Labels()))
    wanted = {"sender_cgroup"} if labels == ("sender_container",) else {"target_cgroup"}
    for name in top_probes.CGROUP_FIELD_NAMES:
        loads = f"(r7 +{rec.offset(name)})" in text
        assert loads == (name in wanted), name
    assert top.Counter(containers=True).cgroups  # top --containers: the table's key too


def test_key_resolver_reads_the_cgroup_ids_of_an_80_byte_key() -> None:
    from test_top_render import FakeProc, raw_key

    resolve = top.KeyResolver(FakeProc())  # type: ignore[arg-type]
    generated = raw_key() + top_probes.CGROUP_KEY_STRUCT.pack(SENDER_CGROUP, TARGET_CGROUP)
    key = resolve(generated)
    assert (key.sender_cgroup, key.target_cgroup) == (SENDER_CGROUP, TARGET_CGROUP)
    assert key.target_pid == 200 and key.outcome == "delivered"
    failed = resolve(raw_key(outcome=rec.GEN_NONE, result=-3)
                     + top_probes.CGROUP_KEY_STRUCT.pack(SENDER_CGROUP, 0))
    assert (failed.sender_cgroup, failed.target_cgroup) == (SENDER_CGROUP, None)
    plain = resolve(raw_key())
    assert (plain.sender_cgroup, plain.target_cgroup) == (None, None)


def _interval() -> top.Interval:
    key = top.RowKey(100, "runc", 200, "nginx", 15, "kill", 0, "delivered",
                     SENDER_CGROUP, TARGET_CGROUP)
    host = top.RowKey(1, "systemd", 300, "cron", 15, "kill", 0, "delivered", HOST_CGROUP, None)
    return top.Interval(time=1_764_000_000.0, interval_s=1.0, rows=[(key, 5), (host, 1)])


def test_top_table_and_json_with_containers() -> None:
    text = top.render_table(_interval(), contexts=contexts)
    header, first, second = text.splitlines()[1:4]
    assert header.endswith("OUTCOME         CONTAINER                TCONTAINER")
    assert first[header.index("CONTAINER"):].split()[0] == DOCKER_ID[:12]
    assert first[header.index("TCONTAINER"):] == "prod/shop/web\\x1b[31m"
    assert second[header.index("CONTAINER"):].split() == ["-", "-"]
    assert "CONTAINER" not in top.render_table(_interval())
    d = top.interval_to_dict(_interval(), contexts=contexts)
    assert d["rows"][0]["sender"]["container"] == CONTEXTS[SENDER_CGROUP]
    assert d["rows"][0]["target"]["container"]["pod_uid"] == POD_UID
    assert d["rows"][1]["target"]["container"] is None
    assert "container" not in top.interval_to_dict(_interval())["rows"][0]["sender"]


def test_exporter_container_labels() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from sigscope.outputs.prometheus import SignalCollector

    assert {"sender_container", "target_container", "pod_uid"} <= set(LABEL_NAMES)
    assert not {"sender_container", "target_container", "pod_uid"} & set(DEFAULT_LABELS)
    base = dict(sender_pid=0, sender_comm="", target_pid=None, target_comm=None, sig=15,
                signal="SIGTERM", via="kill", result=None, error=None, outcome=None)
    rows = [CountRow(**base, count=3, sender_container=DOCKER_ID[:12],  # type: ignore[arg-type]
                     target_container="prod/shop/web", pod_uid=POD_UID),
            CountRow(**base, count=2, sender_container=DOCKER_ID[:12],  # type: ignore[arg-type]
                     target_container="prod/shop/web", pod_uid=POD_UID),
            CountRow(**base, count=1)]  # type: ignore[arg-type]
    labels = parse_labels("signal,sender_container,target_container,pod_uid")
    collector = SignalCollector(lambda: (rows, Health(0, 0, 0, 6)), labels)
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    text = prometheus_client.generate_latest(registry).decode()
    assert (f'sigscope_signals_total{{pod_uid="{POD_UID}",sender_container="{DOCKER_ID[:12]}",'
            'signal="SIGTERM",target_container="prod/shop/web"} 5.0') in text
    assert ('sigscope_signals_total{pod_uid="",sender_container="",signal="SIGTERM",'
            'target_container=""} 1.0') in text


def test_top_container_options_parse(capsys) -> None:
    args = build_parser().parse_args(["top", "--containers", "--prometheus", ":1",
                                      "--labels", "pod_uid,sender_container,target_container"])
    assert args.containers
    assert parse_labels(args.labels) == ("pod_uid", "sender_container", "target_container")
    assert main(["top", "--labels", "pod_uid"]) == 2  # --labels still needs --prometheus
    assert "--labels needs --prometheus" in capsys.readouterr().err


# --- lookups and a cgroup v1-only host ----------------------------------------------------

V1_ONLY = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup \
rw,xattr,name=systemd
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup \
rw,memory
"""


def test_a_v1_only_host_says_once_that_context_is_unavailable(tmp_path: Path, capsys) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(V1_ONLY)
    mount = cgroup2_mount(str(mountinfo))
    assert mount is None
    lookup = ContainerLookup(CgroupResolver(mount), LocalNames(str(tmp_path)))
    assert not lookup.available
    lookup.start()
    lookup.start()
    assert lookup(TARGET_CGROUP) is None and lookup.label(TARGET_CGROUP) is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sigscope: ") and err[0].endswith(UNAVAILABLE)
    # ... and tracing goes on: the records carry the kernel's id and a null container
    e = event(contexts=lookup)
    assert e.to_dict()["target"] == {**e.to_dict()["target"], "cgroup_id": TARGET_CGROUP,
                                     "container": None}


class CountingResolver(CgroupResolver):
    """A resolver over a fake mount whose paths the test sets: counts the lookups."""

    def __init__(self, paths: dict[int, str]) -> None:
        super().__init__(None, warn=None)
        self.mount = object()  # type: ignore[assignment]  # "available"; path() is ours
        self.paths = paths
        self.asked = 0

    def path(self, cgroup_id: int) -> str | None:
        self.asked += 1
        return self.paths.get(cgroup_id)


def test_lookup_caches_per_id_and_retries_what_is_incomplete(tmp_path: Path) -> None:
    now = [0.0]
    resolver = CountingResolver({1: "/system.slice/cron.service",
                                 2: f"/system.slice/docker-{DOCKER_ID}.scope"})
    lookup = ContainerLookup(resolver, LocalNames(str(tmp_path), clock=lambda: now[0]),
                             retry_interval=5.0, clock=lambda: now[0])
    first = lookup(1)
    assert first is not None and first["unit"] == "cron.service"
    assert lookup(1) is first and resolver.asked == 1  # complete: cached for good
    assert lookup(2) is not None and resolver.asked == 2
    lookup(2)
    assert resolver.asked == 2  # no name yet: cached until the retry
    config = tmp_path / "var/lib/docker/containers" / DOCKER_ID / "config.v2.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"Name": "/db"}')
    now[0] = 6.0
    assert lookup.label(2) == "db" and resolver.asked == 3
    assert lookup(None) is None and lookup(0) is None and resolver.asked == 3
    assert lookup(99) is None and lookup(99) is None and resolver.asked == 4


@pytest.mark.parametrize("command", ["trace", "top"])
def test_host_root_must_be_a_directory(command, tmp_path: Path, capsys) -> None:
    assert main([command, "--host-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host-root: not a directory" in err[0]
