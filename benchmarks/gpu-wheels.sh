#!/usr/bin/env bash
# Wheels for benchmarks/gpu.sh on a GPU machine without internet (x86-64 Linux, CPython 3.12 or 3.11), into
# .whl/cp312 and .whl/cp311 (git-ignored), to travel with the working tree.
#
#   benchmarks/gpu-wheels.sh           # the service's and tests' dependencies: ~12 MB a Python
#   benchmarks/gpu-wheels.sh --all     # also numpy and matplotlib (which the GPU machines' python has)
#   benchmarks/gpu-wheels.sh --torch   # --all, and torch==2.13.0 (PyPI's CUDA build) with its nvidia-* wheels: ~3 GB
#
# The default is for machines whose python already has a CUDA torch (the lent GPU machines do; a transfer there
# carries at most 64 MiB, so a CUDA torch cannot travel); `--torch` is for a machine without one and a way to
# carry gigabytes. gpu.sh installs, from the folder matching its python, only what that python lacks.
# Overrides: PY (the python whose pip downloads), WHEELS (the folder, default .whl), PYTHONS ("312 311").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
case ${1:-} in
  "") SKIP="torch numpy matplotlib" ;;
  --all) SKIP="torch" ;;
  --torch) SKIP="" ;;
  *) echo "usage: $0 [--all | --torch]" >&2; exit 2 ;;
esac
# The project's dependencies (pyproject.toml) but the skipped ones, and what the tests and benchmarks use.
mapfile -t DEPS < <("$PY" - "$SKIP" <<'PYTHON'
import re, sys, tomllib
skip = set(sys.argv[1].split())
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    name = re.match(r"[A-Za-z0-9_.-]+", d)[0]
    if name not in skip:
        print("torch==2.13.0" if name == "torch" else d)  # the exact release gpu.sh installs
print("pytest>=8\nhttpx>=0.27")
PYTHON
)
for v in ${PYTHONS:-312 311}; do
  dest=$WHEELS/cp$v
  mkdir -p "$dest"
  "$PY" -m pip download -q --only-binary=:all: --implementation cp --python-version "${v:0:1}.${v:1}" \
    --abi "cp$v" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dest" "${DEPS[@]}"
  echo "$dest: $(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
done
