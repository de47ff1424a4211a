"""The design, held: lower layers never import higher ones (parsed with ast, lazy imports
included), one vocabulary (no second copy of the send paths, outcomes or signal numbers), and
the start-up budget of `sigscope trace` (what it imports before loading programs)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "sigscope"

# Lowest first; a module may import its own layer and those below (docs/ARCHITECTURE.md).
LAYERS = {
    "base": -1,     # errors.py: imports nothing, so every layer may raise its classes
    "bpf": 0,
    "model": 1,
    "programs": 2,
    "tool": 3,      # decode, fate, session, tracer, top, send, containers, the settings modules
    "outputs": 4,
    "cli": 5,
    "package": 6,   # sigscope/__init__.py, __main__.py
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__", "__init__"):
        return "package"
    if parts[1] == "errors":
        return "base"
    if parts[1] in ("bpf", "model", "programs", "outputs", "cli"):
        return parts[1]
    return "tool"


def sigscope_imports(path: Path) -> set[str]:
    """Every sigscope module `path` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("sigscope"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("sigscope"):
                found.add(node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_lower_layers_never_import_higher_ones(path: Path) -> None:
    here = module_name(path)
    mine = LAYERS[layer_of(here)]
    above = sorted(m for m in sigscope_imports(path)
                   if m != "sigscope" and LAYERS[layer_of(m)] > mine)
    assert not above, f"{here} ({layer_of(here)}) imports higher layers: {above}"


# Builders are pure: they take the fds of maps the session made, and attach nothing.
NOT_IN_PROGRAMS = {"sigscope.bpf.maps", "sigscope.bpf.attach", "sigscope.session"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "programs").glob("*.py")),
                         ids=lambda p: module_name(p))
def test_program_builders_make_no_maps_and_attach_nothing(path: Path) -> None:
    found = sigscope_imports(path) & NOT_IN_PROGRAMS
    assert not found, f"{module_name(path)} imports {sorted(found)}: maps belong to the session"


def test_every_module_is_in_a_known_layer_and_parses() -> None:
    assert len(MODULES) > 30
    for path in MODULES:
        assert layer_of(module_name(path)) in LAYERS


# --- one vocabulary -------------------------------------------------------------------------

def literal_strings(node: ast.AST, dict_keys: bool) -> set[str]:
    """The string constants of a tuple/list/set literal (or, with dict_keys, a dict's keys)."""
    items: list[ast.expr | None] = []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = list(node.elts)
    elif dict_keys and isinstance(node, ast.Dict):
        items = list(node.keys)
    return {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}


VOCABULARY_HOMES = {
    # what: (the module that defines it, the names). A table keyed by send path (the tracefs
    # fields of each syscall) is about the vocabulary, not a copy of it: dict keys count only
    # for signal names (a second number table).
    "send paths": ("sigscope.model.record", {"kill", "tkill", "tgkill", "rt_sigqueueinfo",
                                            "rt_tgsigqueueinfo", "pidfd_send_signal"}),
    "outcomes": ("sigscope.model.signals", {"delivered", "ignored", "already_pending",
                                             "overflow", "lose_info"}),
    "signal names": ("sigscope.model.signals", {"SIGHUP", "SIGINT", "SIGKILL", "SIGCHLD"}),
}


@pytest.mark.parametrize("what", sorted(VOCABULARY_HOMES))
def test_the_vocabulary_is_written_down_once(what: str) -> None:
    home, names = VOCABULARY_HOMES[what]
    copies = []
    for path in [*MODULES, SRC.parent / "bench" / "run.py"]:
        module = module_name(path) if path.is_relative_to(SRC) else "bench.run"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if names <= literal_strings(node, what == "signal names") and module != home:
                copies.append(f"{module}:{node.lineno}")
    assert not copies, f"{what} spelled out again (take them from {home}): {copies}"


# --- the start-up budget of `sigscope trace` -------------------------------------------------

# What `sigscope trace` may import before it loads programs: the command line, the tracer and
# what it needs to build, load and read the probes, and the text output. Not --fate, `top`, the
# exporter, `send` or a full BTF parser.
TRACE_MODULES = {
    "sigscope", "sigscope.cli", "sigscope.cli.main", "sigscope.trace_settings",
    "sigscope.top_settings", "sigscope.tracer", "sigscope.session", "sigscope.decode",
    "sigscope.model", "sigscope.model.event", "sigscope.model.filters", "sigscope.model.record",
    "sigscope.model.signals", "sigscope.outputs", "sigscope.outputs.trace", "sigscope.programs",
    "sigscope.programs.common", "sigscope.programs.context", "sigscope.programs.signal",
    "sigscope.programs.task", "sigscope.programs.entry_regs",
    "sigscope.bpf", "sigscope.bpf.asm", "sigscope.bpf.attach", "sigscope.bpf.btf_scan",
    "sigscope.bpf.arch", "sigscope.bpf.features", "sigscope.bpf.maps", "sigscope.bpf.privileges",
    "sigscope.bpf.program", "sigscope.bpf.readers", "sigscope.bpf.readers.perfbuf",
    "sigscope.bpf.readers.ringbuf", "sigscope.bpf.readers.fence", "sigscope.bpf.syscall",
    "sigscope.bpf.tracefs",
    "sigscope.bpf.uapi", "sigscope.errors", "sigscope.model.escape", "sigscope.model.origins",
    "sigscope.kstack", "sigscope.programs.origin",
}
# Standard library packages it may import (their submodules included); C accelerator modules
# (leading underscore) are not listed. A superset for Python 3.10-3.13.
TRACE_STDLIB = {
    "__future__", "argparse", "bz2", "collections", "contextlib", "copyreg", "ctypes", "enum",
    "errno", "fnmatch", "functools", "gettext", "itertools", "keyword", "locale", "lzma",
    "mmap", "operator", "re", "reprlib", "resource", "select", "shutil", "signal", "sre_compile",
    "sre_constants", "sre_parse", "stat", "struct", "textwrap", "types", "typing", "warnings",
    "weakref", "zlib", "colorsys", "difflib", "heapq", "bisect", "math",
}
NEVER_AT_START = {"json", "dataclasses", "http", "socketserver", "logging", "threading",
                  "prometheus_client", "sigscope.fate", "sigscope.top", "sigscope.send",
                  "sigscope.outputs.prometheus", "sigscope.outputs.prometheus_http",
                  "sigscope.programs.fate", "sigscope.programs.count",
                  "sigscope.containers"}

TRACE_UNTIL_LOADING = """\
import sys
before = set(sys.modules)
from sigscope.cli import main as cli
args = cli.build_parser().parse_args(["trace", "-s", "USR1"])
filters = cli.filters_from_args(args)
from sigscope.outputs.trace import TextWriter
from sigscope.tracer import Tracer
tracer = Tracer(filters, buffer=args.buffer, buffer_size=args.buffer_size,
                duration=args.duration, fate=args.fate)
writer = TextWriter(sys.stdout, args.timestamp, fate=args.fate)
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def test_trace_start_up_imports_stay_within_the_budget() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", TRACE_UNTIL_LOADING], env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    imported = set(result.stdout.split())
    ours = {m for m in imported if m.split(".")[0] == "sigscope"}
    stdlib = {m.split(".")[0] for m in imported - ours if not m.startswith("_")}
    assert not ours - TRACE_MODULES, f"sigscope modules beyond the budget: {ours - TRACE_MODULES}"
    assert not stdlib - TRACE_STDLIB, f"stdlib beyond the budget: {stdlib - TRACE_STDLIB}"
    heavy = {m for m in imported if m in NEVER_AT_START or m.split(".")[0] in NEVER_AT_START}
    assert not heavy, f"heavy modules at start-up: {heavy}"
    assert "sigscope.programs.signal" in ours  # the probe being built: the test saw the path


# --- docs/ARCHITECTURE.md lists the tree as it is ------------------------------------------

def test_architecture_tree_lists_every_module() -> None:
    text = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    tree = text.split("```", 2)[1]
    listed = set(re.findall(r"\b(\w+\.py)\b", tree))
    present = {p.name for p in MODULES if p.name not in ("__init__.py", "__main__.py")}
    assert present - listed == set(), f"modules missing from the tree: {present - listed}"
    assert listed - present == set(), f"the tree lists modules that are gone: {listed - present}"
