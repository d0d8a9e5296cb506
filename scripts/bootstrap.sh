#!/usr/bin/env bash
# Creates .venv and installs relmon with everything it needs (idempotent; re-runs when
# pyproject.toml changes). torch is installed first from the CPU wheel so that nothing pulls
# a CUDA build of several GB (the README says why).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Debian's chromium for the dashboard's browser tests (tests/integration/test_dashboard_browser.py);
# only when it is missing and apt-get exists, so this costs nothing once installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
stamp=.venv/.relmon-installed
want=$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[train,dev]"
echo "$want" > "$stamp"
