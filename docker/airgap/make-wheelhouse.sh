#!/usr/bin/env bash
# Wheels for an offline image build: torch's CPU build (no CUDA libraries), the project and everything it
# needs, for CPython 3.11 on x86-64 Linux, into docker/airgap/wheels/ (which docker/Dockerfile installs from).
#
#   docker/airgap/make-wheelhouse.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=docker/airgap/wheels
mkdir -p "$OUT"
"$PY" -m pip wheel -q --wheel-dir "$OUT" torch==2.13.0 setuptools wheel ".[serve,train]"
rm -f "$OUT"/ptb_lm-*.whl  # the project itself is built from the source in the image
ls "$OUT" | wc -l | xargs echo "wheels in $OUT:"
du -sh "$OUT"
