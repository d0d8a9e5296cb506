#!/usr/bin/env bash
# `make test`: lint and every test. When the model is missing, `relmon model build` (minutes,
# CPU-bound) runs beside lint, the unit tier and the integration tests that do not use the model
# (so those also run on a loaded machine, as they must pass); the tests that use it
# (`needs_model`, set by tests/conftest.py) start once it is published, while the others still
# run. With arguments
# (`make test ARGS=...`) lint runs, the model is built, and pytest gets the arguments as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL=models/relmon-minilm-ce/card.json
PYTEST=("$BIN/python" -m pytest -ra --durations=25)

if [ "$#" -gt 0 ]; then
  "$BIN/ruff" check . && "$BIN/ruff" format --check . && "$BIN/mypy" || exit 1
  if [ ! -f "$MODEL" ]; then "$BIN/relmon" model build || exit 1; fi
  exec "${PYTEST[@]}" "$@"
fi

SECONDS=0  # the phase lines below say where a slow run spent its time
build_pid=""
if [ ! -f "$MODEL" ]; then
  echo "building the model beside lint and the tests that do not use it (log: build/model-build.log)"
  mkdir -p build
  "$BIN/relmon" model build >build/model-build.log 2>&1 &
  build_pid=$!
fi
lint=0
"$BIN/ruff" check . && "$BIN/ruff" format --check . && "$BIN/mypy" || lint=1
if [ "$lint" -ne 0 ]; then
  if [ -n "$build_pid" ]; then kill "$build_pid" 2>/dev/null; wait "$build_pid"; fi
  echo "lint failed: fix it first (make lint)" >&2
  exit 1
fi
echo "lint done at ${SECONDS} s"
"${PYTEST[@]}" tests/unit
unit=$?
echo "unit tier done at ${SECONDS} s"
# The integration tests that do not use the model run in the background, beside the model build
# and then beside the tests that use it: most of both tiers' time is waiting on servers and
# replays, not CPU, so on 2 cores the two sessions overlap instead of queueing. Each session has
# its own temporary directory; every server a test starts takes a free port. The background
# session's output is printed once it ends.
mkdir -p build
(
  "${PYTEST[@]}" -p no:cacheprovider --basetemp=build/pytest-servers \
    tests/integration -m "not needs_model"
  rc=$?
  echo "integration tier without the model done at ${SECONDS} s"
  exit "$rc"
) >build/test-servers.log 2>&1 &
servers_pid=$!
finish_servers() {
  wait "$servers_pid"
  servers=$?
  cat build/test-servers.log
}
if [ -n "$build_pid" ]; then
  if ! wait "$build_pid"; then
    tail -n 50 build/model-build.log
    echo "relmon model build failed (build/model-build.log)" >&2
    finish_servers
    exit 1
  fi
  grep -m1 "^built " build/model-build.log || true
  echo "model built by ${SECONDS} s"
fi
"${PYTEST[@]}" --basetemp=build/pytest-model tests/integration -m needs_model
model=$?
echo "integration tier with the model done at ${SECONDS} s"
finish_servers
echo "unit tier: exit $unit; integration tier without the model: exit $servers; with it: exit $model"
[ "$unit" -eq 0 ] && [ "$servers" -eq 0 ] && [ "$model" -eq 0 ]
