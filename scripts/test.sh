#!/usr/bin/env bash
# `make test`: every test. When the model is missing, `relmon model build` (minutes, CPU-bound)
# runs beside the unit tier, which does not need it; the integration tier starts once the model
# is published. With arguments (`make test ARGS=...`) the model is built first and pytest gets
# them as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL=models/relmon-minilm-ce/card.json
PYTEST=("$BIN/python" -m pytest -ra --durations=25)

build() {
  mkdir -p build
  "$BIN/relmon" model build >build/model-build.log 2>&1
}

if [ "$#" -gt 0 ]; then
  if [ ! -f "$MODEL" ]; then "$BIN/relmon" model build || exit 1; fi
  exec "${PYTEST[@]}" "$@"
fi

build_pid=""
if [ ! -f "$MODEL" ]; then
  echo "building the model beside the unit tier (log: build/model-build.log)"
  build &
  build_pid=$!
fi
"${PYTEST[@]}" tests/unit
unit=$?
if [ -n "$build_pid" ]; then
  if ! wait "$build_pid"; then
    tail -n 50 build/model-build.log
    echo "relmon model build failed (build/model-build.log)" >&2
    exit 1
  fi
  grep -m1 "^built " build/model-build.log || true
fi
"${PYTEST[@]}" tests/integration
integration=$?
echo "unit tier: exit $unit; integration tier: exit $integration"
[ "$unit" -eq 0 ] && [ "$integration" -eq 0 ]
