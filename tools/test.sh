#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine, as root.
# Installs what it needs (python3-venv, a C compiler for the benchmark generator test), builds a
# virtualenv in .venv, installs sigscope with its test extras, then runs ruff and pytest, then
# (under CI=true or SIGSCOPE_KMATRIX=1) tests/kernel in other kernels: tools/kernel-matrix test.
# Quick host-only loop: SIGSCOPE_KMATRIX=0 ./tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/mypy   # [tool.mypy] in pyproject.toml: src/sigscope
# Unit tests run anywhere; kernel tests run as root (and may not skip under CI=true).
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

# Then tests/kernel in other kernels under qemu (docs/KERNEL-MATRIX.md): under CI=true or with
# SIGSCOPE_KMATRIX=1; SIGSCOPE_KMATRIX=0 skips it (the quick host-only edit-test loop).
# The default kernel set is DEFAULT_TEST_KERNELS in tools/kmatrix/table.py (~25 min, 2 cores).
case "${SIGSCOPE_KMATRIX:-}" in
  0) exit 0 ;;
  1) ;;
  *) [ "${CI:-}" = true ] || exit 0 ;;
esac
exec ./tools/kernel-matrix test
