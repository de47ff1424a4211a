"""The kernel matrix and its feature table (kernels.json next to this file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("kernels.json")
ARCHES = {"x86_64": "amd64", "arm64": "arm64"}  # our name -> Debian architecture
# The kernels `tools/kernel-matrix test` runs when given none (and what tools/test.sh runs in
# CI): every x86_64 kernel plus the newest arm64 one (arm64/6.1 adds ~6 min for little news).
DEFAULT_TEST_KERNELS = ("x86_64/5.10", "x86_64/6.1", "x86_64/6.12", "arm64/6.12")


@dataclass(frozen=True)
class Kernel:
    name: str  # x86_64/6.1
    arch: str  # x86_64 | arm64
    suite: str  # Debian suite it comes from
    package: str  # regular expression for the linux-image package name
    missing: tuple[str, ...]  # sigscope kernel features it lacks

    @property
    def debian_arch(self) -> str:
        return ARCHES[self.arch]

    @property
    def slug(self) -> str:  # for file names
        return self.name.replace("/", "-")

    def expect_missing(self) -> str:
        """The SIGSCOPE_EXPECT_MISSING value for this kernel."""
        return ",".join(self.missing)


@dataclass(frozen=True)
class Table:
    features: dict[str, str]
    kernels: dict[str, Kernel]
    host_missing: tuple[str, ...]


class TableError(ValueError):
    pass


def parse_table(data: dict) -> Table:
    """Validate the table: known arches, known feature names, no duplicates."""
    try:
        features = dict(data["features"])
        raw_kernels = data["kernels"]
    except (KeyError, TypeError) as exc:
        raise TableError(f"table needs 'features' and 'kernels': {exc}") from None

    def check(where: str, names: list) -> tuple[str, ...]:
        unknown = [n for n in names if n not in features]
        if unknown:
            raise TableError(f"{where}: unknown feature(s) {', '.join(unknown)}")
        if len(set(names)) != len(names):
            raise TableError(f"{where}: a feature is listed twice")
        return tuple(names)

    kernels = {}
    for name, entry in raw_kernels.items():
        arch = entry.get("arch")
        if arch not in ARCHES or not name.startswith(arch + "/"):
            raise TableError(f"{name}: arch must be one of {', '.join(ARCHES)} and prefix the name")
        for key in ("suite", "package"):
            if not isinstance(entry.get(key), str):
                raise TableError(f"{name}: missing {key}")
        kernels[name] = Kernel(name, arch, entry["suite"], entry["package"],
                               check(name, list(entry.get("missing", []))))
    host = check("host", list(data.get("host", {}).get("missing", [])))
    return Table(features, kernels, host)


def load_table(path: Path = TABLE_FILE) -> Table:
    return parse_table(json.loads(path.read_text()))
