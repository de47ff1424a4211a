"""The Prometheus exposition side of `sigscope top`, driven by a fake count snapshot.

Every scrape goes over real loopback HTTP and is parsed back with prometheus_client's own parsers,
so what is asserted is what Prometheus would ingest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sigscope import __version__
from sigscope.outputs.prometheus import (
    DEFAULT_LABELS,
    LABEL_NAMES,
    MISSING_DEPENDENCY,
    CountRow,
    ExporterError,
    Health,
    SignalCollector,
    parse_labels,
    parse_listen_address,
    serve,
)

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="pip install prometheus-client (in the 'test' extra)"
)
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def row(
    *,
    sender_pid: int = 100,
    sender_comm: str = "bash",
    target_pid: int | None = 200,
    target_comm: str | None = "sleep",
    sig: int = 15,
    signal: str = "SIGTERM",
    via: str = "kill",
    result: int | None = 0,
    error: str | None = None,
    outcome: str | None = "delivered",
    count: int = 1,
) -> CountRow:
    return CountRow(
        sender_pid=sender_pid,
        sender_comm=sender_comm,
        target_pid=target_pid,
        target_comm=target_comm,
        sig=sig,
        signal=signal,
        via=via,
        result=result,
        error=error,
        outcome=outcome,
        count=count,
    )


class FakeCounts:
    """A snapshot source whose cumulative state the test sets between scrapes."""

    def __init__(self, rows: list[CountRow], health: Health) -> None:
        self.rows = rows
        self.health = health
        self.calls = 0
        self.fail_with: Exception | None = None

    def __call__(self) -> tuple[list[CountRow], Health]:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return list(self.rows), self.health


ROWS = [
    # Same signal/via/outcome/comms, different pids: collapse under the default labels.
    row(sender_pid=100, target_pid=200, count=3),
    row(sender_pid=101, target_pid=201, count=4),
    # A failed kill to a pid that does not exist: no target, an error, no outcome.
    row(target_pid=None, target_comm=None, result=-3, error="ESRCH", outcome=None, count=2),
    # Kernel-generated SIGSEGV.
    row(
        sender_pid=300,
        sender_comm="crashy",
        target_pid=300,
        target_comm="crashy",
        sig=11,
        signal="SIGSEGV",
        via="fault",
        result=None,
        outcome="killed",
        count=1,
    ),
]
HEALTH = Health(lost_events=5, map_full=1, other=7, records=17, keys=4, max_keys=4,
                skipped=3)


def scrape(url: str, accept: str | None = None) -> str:
    request = urllib.request.Request(url)
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str, parser=text_string_to_metric_families) -> dict:
    """{(sample name, frozenset(labels)): value} for every sample in the exposition."""
    found = {}
    for family in parser(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def signal_samples(found: dict) -> dict:
    return {
        tuple(sorted(labels)): value
        for (name, labels), value in found.items()
        if name == "sigscope_signals_total"
    }


def labels_of(**values: str) -> tuple:
    return tuple(sorted(values.items()))


@pytest.fixture
def counts() -> FakeCounts:
    return FakeCounts(list(ROWS), HEALTH)


@pytest.fixture
def server(counts):
    with serve("127.0.0.1:0", SignalCollector(counts)) as running:
        yield running


def test_default_labels_sum_collapsed_rows(server) -> None:
    found = samples(scrape(server.url))
    assert signal_samples(found) == {
        labels_of(
            signal="SIGTERM",
            via="kill",
            outcome="delivered",
            sender_comm="bash",
            target_comm="sleep",
        ): 7.0,
        labels_of(
            signal="SIGTERM", via="kill", outcome="", sender_comm="bash", target_comm=""
        ): 2.0,
        labels_of(
            signal="SIGSEGV",
            via="fault",
            outcome="killed",
            sender_comm="crashy",
            target_comm="crashy",
        ): 1.0,
    }


def test_health_counters_tracked_keys_and_build_info(server) -> None:
    text = scrape(server.url)
    found = samples(text)
    assert found[("sigscope_lost_events_total", frozenset())] == 5.0
    assert found[("sigscope_map_full", frozenset())] == 1.0
    assert found[("sigscope_other_signals_total", frozenset())] == 7.0
    assert found[("sigscope_records_total", frozenset())] == 17.0
    assert found[("sigscope_skipped_probe_runs_total", frozenset())] == 3.0
    # Keys in the kernel map (Health.keys), not rows after resolution (3 here).
    assert found[("sigscope_tracked_keys", frozenset())] == 4.0
    assert found[("sigscope_max_keys", frozenset())] == 4.0
    build = {
        labels: value for (name, labels), value in found.items() if name == "sigscope_build_info"
    }
    assert build == {frozenset({("version", __version__), ("kernel", os.uname().release)}): 1.0}

    types = {name: family.type for name, family in families(text).items()}
    assert types == {
        "sigscope_signals": "counter",
        "sigscope_lost_events": "counter",
        "sigscope_map_full": "gauge",
        "sigscope_other_signals": "counter",
        "sigscope_records": "counter",
        "sigscope_skipped_probe_runs": "counter",
        "sigscope_tracked_keys": "gauge",
        "sigscope_max_keys": "gauge",
        "sigscope_build_info": "gauge",
    }
    # Only our collector is registered: no process_*/python_* metrics from the global registry.
    assert all(name.startswith("sigscope_") for name, _ in found)


def test_chosen_labels_including_pids_and_error() -> None:
    counts = FakeCounts(list(ROWS), HEALTH)
    collector = SignalCollector(counts, labels=("error", "target_pid"))
    with serve("127.0.0.1:0", collector) as running:
        found = samples(scrape(running.url))
    assert signal_samples(found) == {
        labels_of(error="", target_pid="200"): 3.0,
        labels_of(error="", target_pid="201"): 4.0,
        labels_of(error="ESRCH", target_pid=""): 2.0,
        labels_of(error="", target_pid="300"): 1.0,
    }


def test_label_values_from_other_processes_are_escaped() -> None:
    # A comm may carry an escape sequence, a newline or a backslash (prctl PR_SET_NAME).
    counts = FakeCounts([row(sender_comm="ev\x1b[2Jil\nx\\y", count=5)], HEALTH)
    collector = SignalCollector(counts, labels=("sender_comm",))
    with serve("127.0.0.1:0", collector) as running:
        text = scrape(running.url)
    assert "\x1b" not in text
    found = samples(text)
    assert signal_samples(found) == {labels_of(sender_comm="ev\\x1b[2Jil\\nx\\\\y"): 5.0}


def test_no_labels_gives_one_total_series() -> None:
    collector = SignalCollector(FakeCounts(list(ROWS), HEALTH), labels=parse_labels(""))
    with serve("127.0.0.1:0", collector) as running:
        found = samples(scrape(running.url))
    assert signal_samples(found) == {(): 10.0}


def test_next_scrape_reflects_changed_snapshot(server, counts) -> None:
    first = samples(scrape(server.url))
    terminated = labels_of(
        signal="SIGTERM", via="kill", outcome="delivered", sender_comm="bash", target_comm="sleep"
    )
    assert signal_samples(first)[terminated] == 7.0

    counts.rows = [
        *ROWS,
        row(sender_pid=102, count=5),
        row(sig=2, signal="SIGINT", via="tty", result=None, count=1),
    ]
    counts.health = Health(lost_events=6, map_full=1, other=9, records=25, keys=6, max_keys=6)
    second = samples(scrape(server.url))

    assert signal_samples(second)[terminated] == 12.0
    assert (
        signal_samples(second)[
            labels_of(
                signal="SIGINT",
                via="tty",
                outcome="delivered",
                sender_comm="bash",
                target_comm="sleep",
            )
        ]
        == 1.0
    )
    assert second[("sigscope_lost_events_total", frozenset())] == 6.0
    assert second[("sigscope_other_signals_total", frozenset())] == 9.0
    assert second[("sigscope_records_total", frozenset())] == 25.0
    assert second[("sigscope_tracked_keys", frozenset())] == 6.0
    assert counts.calls == 2  # one snapshot per scrape, none at registration


def test_counters_never_go_down_when_rows_are_forgotten(server, counts) -> None:
    terminated = labels_of(
        signal="SIGTERM", via="kill", outcome="delivered", sender_comm="bash", target_comm="sleep"
    )
    segv = labels_of(
        signal="SIGSEGV", via="fault", outcome="killed", sender_comm="crashy", target_comm="crashy"
    )
    scrape(server.url)
    # The counting side forgets pid 100's row (3) and the SIGSEGV key altogether.
    counts.rows = [ROWS[1], ROWS[2]]
    after_drop = signal_samples(samples(scrape(server.url)))
    assert after_drop[terminated] == 7.0
    assert after_drop[segv] == 1.0
    # New counts on top of the forgotten ones still show up as increments.
    counts.rows = [ROWS[1]._replace(count=6), ROWS[2]]
    assert signal_samples(samples(scrape(server.url)))[terminated] == 9.0


def test_openmetrics_negotiation(server) -> None:
    text = scrape(server.url, accept="application/openmetrics-text; version=1.0.0")
    assert text.rstrip().endswith("# EOF")
    found = samples(text, parser=openmetrics_families)
    assert found[("sigscope_map_full", frozenset())] == 1.0


@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/favicon.ico"])
def test_other_paths_are_404(server, path) -> None:
    url = f"http://127.0.0.1:{server.port}{path}"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=10)
    assert caught.value.code == 404


def test_query_string_is_ignored(server) -> None:
    found = samples(scrape(server.url + "?format=text"))
    assert found[("sigscope_records_total", frozenset())] == 17.0


def test_failing_snapshot_is_a_500_and_the_server_survives(server, counts) -> None:
    counts.fail_with = OSError("map read failed")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.url, timeout=10)
    assert caught.value.code == 500
    assert "map read failed" in caught.value.read().decode()
    counts.fail_with = None
    assert samples(scrape(server.url))[("sigscope_records_total", frozenset())] == 17.0


def test_concurrent_scrapes_agree(server) -> None:
    results: list[dict] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(signal_samples(samples(scrape(server.url))))
        except BaseException as error:  # reported below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 8
    assert all(result == results[0] for result in results)


def test_server_reports_bound_port_and_close_stops_it(counts) -> None:
    running = serve("127.0.0.1:0", SignalCollector(counts))
    assert running.port > 0
    assert running.url == f"http://127.0.0.1:{running.port}/metrics"
    scrape(running.url)
    running.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(running.url, timeout=5)


def test_ipv6_loopback(counts) -> None:
    try:
        running = serve("[::1]:0", SignalCollector(counts))
    except ExporterError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    with running:
        assert running.url == f"http://[::1]:{running.port}/metrics"
        assert samples(scrape(running.url))[("sigscope_map_full", frozenset())] == 1.0


def test_port_in_use_is_one_line_error(server, counts) -> None:
    with pytest.raises(ExporterError) as caught:
        serve(f"127.0.0.1:{server.port}", SignalCollector(counts))
    message = str(caught.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{server.port}: ")
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# Parsing of --labels and of the listen address


def test_parse_labels() -> None:
    assert parse_labels("signal,via,outcome,sender_comm,target_comm") == DEFAULT_LABELS
    assert parse_labels(" signal , target_pid ,signal,") == ("signal", "target_pid")
    assert parse_labels(",".join(LABEL_NAMES)) == LABEL_NAMES
    assert parse_labels("") == ()


@pytest.mark.parametrize("spec", ["signal,bogus", "Signal", "sig", "comm"])
def test_parse_labels_rejects_unknown_names_in_one_line(spec) -> None:
    with pytest.raises(ValueError) as caught:
        parse_labels(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown label" in message
    for name in LABEL_NAMES:
        assert name in message


def test_collector_rejects_unknown_label() -> None:
    with pytest.raises(ValueError, match="unknown label 'pid'"):
        SignalCollector(FakeCounts([], HEALTH), labels=("signal", "pid"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:9567", ("::", 9567)),
        ("0.0.0.0:9567", ("0.0.0.0", 9567)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen_address(spec, expected) -> None:
    assert parse_listen_address(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "9100",
        "127.0.0.1",
        "127.0.0.1:",
        ":99999",
        "::1:9100",
        "[]:9100",
        "[::1]",
        "host:port",
        "1.2.3.4:-1",
        "",
    ],
)
def test_bad_listen_address_is_one_line_value_error(spec, counts) -> None:
    with pytest.raises(ValueError) as caught:
        serve(spec, SignalCollector(counts))
    assert "\n" not in str(caught.value)
    assert "bad listen address" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# prometheus-client is optional


def _run_without_prometheus_client(code: str) -> subprocess.CompletedProcess:
    # A meta-path finder that refuses prometheus_client, in a fresh interpreter so this process's
    # already-imported copy does not leak in.
    prelude = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'prometheus_client':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, timeout=60
    )


def test_module_imports_without_prometheus_client() -> None:
    result = _run_without_prometheus_client(
        "import sigscope.outputs.prometheus as e\nprint(e.parse_labels('signal,via'))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('signal', 'via')"


@pytest.mark.parametrize(
    "call",
    ["e.SignalCollector(lambda: ([], None))", "e.serve('127.0.0.1:0', object())"],
)
def test_missing_prometheus_client_is_one_line_error(call) -> None:
    result = _run_without_prometheus_client(
        "import sigscope.outputs.prometheus as e\n"
        "try:\n"
        f"    {call}\n"
        "except e.ExporterError as error:\n"
        "    print(str(error))\n"
        "    raise SystemExit(3)\n"
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == MISSING_DEPENDENCY + "\n"
    assert MISSING_DEPENDENCY == (
        "the Prometheus exporter needs prometheus-client: pip install 'sigscope[prometheus]'"
    )


def test_racing_collects_never_inflate_counts() -> None:
    # Each snapshot is one signal more than the last; whatever the interleaving of collect()
    # calls, the exposed count must end equal to the newest snapshot, never above it.
    calls = 0
    calls_lock = threading.Lock()

    def growing() -> tuple[list[CountRow], Health]:
        nonlocal calls
        with calls_lock:
            calls += 1
            current = calls
        time.sleep(0)  # give up the GIL here, to let another collect() overtake this one
        return [row(count=current)], Health(0, 0, 0, current)

    collector = SignalCollector(growing, labels=())
    seen: list[float] = []

    def worker() -> None:
        for _ in range(200):
            (family, *_rest) = collector.collect()
            seen.append(family.samples[0].value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(seen) == 800
    assert max(seen) == calls == 800
    (family, *_rest) = collector.collect()
    assert family.samples[0].value == 801
