"""The README's set-up command leaves `sigscope` on PATH, as every example calls it; the
package metadata builds without setuptools' licence deprecation warning."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    (command,) = [line.strip() for line in section.splitlines() if "pip install" in line]
    return command


def test_readme_install_is_one_command_that_puts_sigscope_on_path() -> None:
    steps = [step.strip() for step in _setup_command().split("&&")]
    venv_bin = "/opt/sigscope/bin"
    assert f"{venv_bin}/pip install '.[prometheus]'" in steps
    # /usr/local/bin is on root's PATH on Debian and Ubuntu (ENV_SUPATH of login.defs).
    link = steps.index(f"ln -sf {venv_bin}/sigscope /usr/local/bin/sigscope")
    assert steps[link + 1:] == ["sigscope selftest"]  # run as every example is written


def test_readme_examples_call_sigscope_by_name() -> None:
    text = (ROOT / "README.md").read_text()
    use = text.split("## Use", 1)[1].split("\n`sigscope trace --help`", 1)[0]
    examples = [line.strip() for line in use.splitlines() if line.startswith("    ")]
    assert examples and all(re.match(r"sigscope( |$)", line) for line in examples)


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    # tomllib is 3.11+ and we support 3.10: the two lines, read as text.
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "GPL-2.0-only"$', text, re.M)  # PEP 639: a string, no table
    (minimum,) = re.findall(r'^requires = \["setuptools>=(\d+)"\]$', text, re.M)
    assert int(minimum) >= 77  # the first setuptools that takes the SPDX string
