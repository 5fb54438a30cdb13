#!/usr/bin/env bash
# The GPU runs in one script: train `medium` and `large` side by side on one GPU, evaluate them, benchmark the
# engine and the HTTP service on the GPU, run the CUDA-only tests, and pack everything into at most 8 files.
#
#   benchmarks/gpu.sh --data data/ptb                 # on the GPU machine (command 1)
#   benchmarks/gpu.sh --data data/ptb --resume        # command 2, only if command 1 stopped training early
#   benchmarks/gpu.sh --dry-run                       # the same, end to end on the CPU with tiny settings
#   make gpu-dry-run                                  # the dry run on $PTB_DATA_DIR
#
# THE PLAN (docs/gpu.md has the arithmetic). A lent machine gives 10 minutes per command and 15 minutes in all,
# machine start included. One training window of batch 20 x 35 steps is ~200 small sequential kernels, so the
# estimate is 2-4 s per epoch for medium (1,327 windows, 39 epochs: 2-3 min) and 5-8 s for large (55 epochs:
# 5-7 min), both running at once. So:
#   command 1 (`--budget 560`, the default): setup, data check, CUDA tests, matmul ceiling (~1 min); training
#     of both configs at once until they finish or until the budget minus the time kept for what follows
#     (`--reserve 150` s) runs out: then each trainer is stopped with SIGINT, losing at most its current epoch
#     (`.resume/` holds the last finished one); then evaluation of the best checkpoints (`--split all`), the
#     engine and HTTP benchmarks on the GPU with the largest model, and the report. Every command's output is
#     complete: a stopped run is reported as "epochs n of N".
#   command 2 (`--resume --budget 220`), started at once after command 1 (the machine goes back after 30 s
#     idle, and with it the checkpoints, which are too large to come back through $OUT): training continues
#     where it stopped, then evaluation, benchmarks and report again.
#
# Output: $OUT when set, else runs/gpu/out: results.md, results.json, models.tar.gz (per model: config.json,
# train_log.jsonl, learning_curve.png; the weights, 79 and 264 MB, stay on the machine) and logs.tar.gz
# (every phase's log, nvidia-smi samples, phase times). Work files live in runs/gpu (git-ignored).
#
# Python: the machine's python3 when its torch sees a GPU (the lent machines have one), with the service's
# missing dependencies installed from the wheels in .whl/ (benchmarks/gpu-wheels.sh makes them) into
# runs/gpu/site; otherwise a virtual environment runs/gpu/venv with torch==2.13.0 (CUDA build, from .whl/ when
# it holds torch, else from the package index). Overrides: PY (the python), WHEELS (the wheel folder),
# PIP_FIND_LINKS / PIP_INDEX_URL (read by pip itself).
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --data DIR          PTB directory (ptb.{train,valid,test}.txt; default data/ptb)
  --dry-run           CPU, tiny settings: one training window of `small` and of `test`, evaluation on 50
                      lines, fp32-only engine benchmark, HTTP at concurrency 2: the whole script in minutes
  --resume            continue the training runs in runs/gpu/models where they stopped
  --budget S          wall-clock seconds for this whole command (default 560)
  --reserve S         seconds kept after training for evaluation, benchmarks and report (default 150)
  --train-budget S    seconds for the training phase (default: budget - elapsed - reserve)
  --configs "A B"     configs trained side by side (default "medium large")
  --train-args "..."  the trainers' extra options (default "--threads 4"; dry run "--dry-run --threads 1")
  --phases LIST       comma-separated subset of setup,data,tests,ceiling,train,eval,engine,http,report
  --work DIR          work directory (default runs/gpu)
  --out DIR           output directory (default $OUT, else WORK/out)
EOF
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
START=$(date +%s)
DATA=data/ptb DRY=0 RESUME=0 BUDGET=560 RESERVE=150 TRAIN_BUDGET= CONFIGS="medium large" PHASES= WORK=runs/gpu
TRAIN_ARGS= BUDGET_GIVEN=0
OUTDIR=${OUT:-}
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2; shift ;;
    --dry-run) DRY=1 ;;
    --resume) RESUME=1 ;;
    --budget) BUDGET=$2; BUDGET_GIVEN=1; shift ;;
    --reserve) RESERVE=$2; shift ;;
    --train-budget) TRAIN_BUDGET=$2; shift ;;
    --configs) CONFIGS=$2; shift ;;
    --train-args) TRAIN_ARGS=$2; shift ;;
    --phases) PHASES=$2; shift ;;
    --work) WORK=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in "$BUDGET" "$RESERVE" ${TRAIN_BUDGET:+"$TRAIN_BUDGET"}; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "gpu.sh: a budget must be whole seconds, not '$n'" >&2; exit 2; }
done

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  [ "$CONFIGS" = "medium large" ] && CONFIGS="small test"
  TRAIN_EXTRA=(--dry-run --threads 1)
  EVAL_SPLIT=test
  ENGINE_ARGS=(--dtypes fp32 --batches 4 --sentences 8 --repeats 1 --type-ahead-sentences 1)
  HTTP_ARGS=(--seconds 0.5 --concurrency 2 --load python)   # as on the GPU machines, which have no wrk
  CEILING_SIZE=128
  [ "$BUDGET_GIVEN" = 1 ] || BUDGET=3600   # a slow CPU must not stop the one-window runs: no budget by default
  # One thread per process: the dry run's processes share a small CPU, and oversubscribed OpenMP spins.
  export OMP_NUM_THREADS=1 LMSERVE_THREADS=1
  PHASES=${PHASES:-data,tests,ceiling,train,eval,engine,http,report}   # setup: the project's own .venv
else
  DEVICE=cuda
  TRAIN_EXTRA=(--threads 4)
  EVAL_SPLIT=all
  ENGINE_ARGS=(--batches 1 8 32 128 512 1024 --repeats 3)
  HTTP_ARGS=(--seconds 3 --concurrency 1 8 32 64 128 256)
  CEILING_SIZE=8192
  PHASES=${PHASES:-setup,data,tests,ceiling,train,eval,engine,http,report}
  [ "$RESUME" = 1 ] && PHASES=${PHASES/tests,/}   # ran in command 1
fi
[ -n "$TRAIN_ARGS" ] && read -r -a TRAIN_EXTRA <<<"$TRAIN_ARGS"
BENCH_CONFIG=${CONFIGS##* }   # the engine and HTTP benchmarks serve the last (largest) config
mkdir -p "$WORK/logs" "$WORK/models"
WORK=$(cd "$WORK" && pwd)
OUTDIR=${OUTDIR:-$WORK/out}
mkdir -p "$OUTDIR"
[ "$RESUME" = 1 ] || : >"$WORK/phases.tsv"
SITE=$WORK/site
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLCONFIGDIR=${MPLCONFIGDIR:-/tmp/matplotlib}
FAILED=()

log() { echo "[gpu.sh $(($(date +%s) - START))s] $*"; }
has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }

# phase NAME CMD...: run CMD with its output in logs/NAME.log (and on the terminal), its times and exit code in
# phases.tsv. A failed phase is recorded and the script goes on (the report says what failed).
phase() {
  local name=$1; shift
  has_phase "$name" || return 0
  log "phase $name"
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" 2>&1 | tee -a "$WORK/logs/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\n' "$name" "$t0" "$t1" "$rc" >>"$WORK/phases.tsv"
  [ "$rc" = 0 ] || { log "phase $name: exit code $rc"; FAILED+=("$name"); }
  return 0
}

# --- setup: a python whose torch sees the GPU, and the service's dependencies -----------------------------
choose_python() {
  if [ "$DRY" = 1 ]; then
    PYBIN=${PY:-$REPO/.venv/bin/python}
    [ -x "$PYBIN" ] || PYBIN=python3
  elif [ -x "$WORK/venv/bin/python" ]; then
    PYBIN=$WORK/venv/bin/python
  else
    PYBIN=${PY:-python3}
  fi
}

setup() {
  local tag wheels
  tag=$("$PYBIN" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")') || return 1
  wheels=${WHEELS:-$REPO/.whl}
  [ -d "$wheels/$tag" ] && wheels=$wheels/$tag
  echo "python: $PYBIN ($tag); wheels: $wheels"
  if ! "$PYBIN" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no torch with CUDA in $PYBIN: a virtual environment with torch==2.13.0 (the CUDA build)"
    "$PYBIN" -m venv "$WORK/venv" || return 1
    PYBIN=$WORK/venv/bin/python
    local src=()
    ls "$wheels"/torch-* >/dev/null 2>&1 && src=(--no-index --find-links "$wheels")
    "$PYBIN" -m pip install -q "${src[@]}" torch==2.13.0 || return 1
  fi
  # The project's dependencies that this python lacks, each from the wheel folder (no index on the machine).
  "$PYBIN" - "$wheels" "$SITE" <<'EOF' || return 1
import importlib.metadata as md, pathlib, re, subprocess, sys
wheels, site = pathlib.Path(sys.argv[1]), sys.argv[2]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
def present(name):
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False
missing = [w for w in sorted(wheels.glob("*.whl")) if not present(norm(w.name.split("-")[0]))]
missing = [w for w in missing if not norm(w.name).startswith(("torch-", "nvidia-", "triton-"))]
print("installing from", wheels, ":", " ".join(w.name for w in missing) or "nothing")
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", site, *map(str, missing)], check=True)
EOF
  "$PYBIN" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' || return 1
  "$PYBIN" -c 'import fastapi, uvicorn, pydantic_settings, safetensors, prometheus_client, httpx, pytest, tqdm, matplotlib'
}

# --- data: the three PTB files, checked against their pinned sha256 ----------------------------------------
check_data() {
  "$PYBIN" - "$DATA" <<'EOF' || return 1
import hashlib, sys
from pathlib import Path
from trainer.download import PTB_SHA256
d = Path(sys.argv[1])
bad = [f"{n}: missing" if not (d / n).is_file() else f"{n}: sha256 differs" for n, sha in PTB_SHA256.items()
       if not (d / n).is_file() or hashlib.sha256((d / n).read_bytes()).hexdigest() != sha]
if bad:
    sys.exit(f"{d}: " + "; ".join(bad) + " (copy the PTB files there: see docs/gpu.md)")
print(f"{d}: the three PTB files, sha256 as pinned")
EOF
  if [ "$DRY" = 1 ]; then   # the real training file; the first 50 lines of valid and test
    mkdir -p "$WORK/ptb-short"
    ln -sf "$(cd "$DATA" && pwd)/ptb.train.txt" "$WORK/ptb-short/ptb.train.txt"
    for s in valid test; do head -n 50 "$DATA/ptb.$s.txt" >"$WORK/ptb-short/ptb.$s.txt"; done
    echo "dry run: evaluating on the first 50 lines of valid and test ($WORK/ptb-short)"
  fi
}

# --- GPU sampling in the background: utilisation, memory, power every 0.5 s --------------------------------
start_sampler() {
  SAMPLER=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
      --format=csv,noheader,nounits -lms 500 >>"$WORK/gpu-samples.csv" 2>/dev/null &
    SAMPLER=$!
  else
    echo "no nvidia-smi: no GPU utilisation samples" >>"$WORK/logs/sampler.log"
  fi
}
stop_sampler() { [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=; }
trap stop_sampler EXIT

# --- training: every config at once, each stopped by SIGINT when the phase's budget runs out ----------------
train_one() {
  local cfg=$1 budget=$2 out=$WORK/models/ptb-$1 mode=(--overwrite)
  if [ -f "$out/config.json" ] && [ ! -d "$out/.resume" ] && grep -q '"test_ppl"' "$out/config.json"; then
    echo "$cfg: finished earlier"; return 0
  fi
  [ "$RESUME" = 1 ] && [ -d "$out/.resume" ] && mode=(--resume)
  timeout -s INT -k 60 "$budget" "$PYBIN" -m trainer train --config "$cfg" --data-dir "$TRAIN_DATA" --out "$out" \
    --device "$DEVICE" --no-progress "${TRAIN_EXTRA[@]}" "${mode[@]}" >"$WORK/logs/train-$cfg.log" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "$cfg: stopped at the budget ($budget s); continue with --resume"
  return "$rc"
}

train_all() {
  local budget=${TRAIN_BUDGET:-$((BUDGET - ($(date +%s) - START) - RESERVE))}
  [ "$budget" -ge "${TRAIN_BUDGET:-30}" ] && [ "$budget" -ge 1 ] \
    || { echo "only ${budget}s left for training: skipped"; return 0; }
  echo "training $CONFIGS side by side on $DEVICE for at most ${budget}s"
  local pids=() cfg rc=0 status
  for cfg in $CONFIGS; do train_one "$cfg" "$budget" & pids+=($!); done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; status=$?
    cfg=$(echo "$CONFIGS" | awk -v k=$((i + 1)) '{print $k}')
    tail -n 3 "$WORK/logs/train-$cfg.log" | sed "s/^/$cfg: /"
    [ "$status" = 0 ] || [ "$status" = 124 ] || rc=$status   # 124: stopped at the budget, resumable
  done
  return "$rc"
}

eval_all() {
  local cfg rc=0
  for cfg in $CONFIGS; do
    [ -f "$WORK/models/ptb-$cfg/config.json" ] || { echo "$cfg: no checkpoint"; rc=1; continue; }
    echo "== $cfg"
    "$PYBIN" -m trainer eval --model "$WORK/models/ptb-$cfg" --data-dir "$TRAIN_DATA" --split "$EVAL_SPLIT" \
      --device "$DEVICE" --no-progress | tee "$WORK/eval-$cfg.txt" || rc=1
  done
  return "$rc"
}

engine() {
  "$PYBIN" -m benchmarks.engine --device "$DEVICE" --model "$WORK/models/ptb-$BENCH_CONFIG" \
    --data-dir "$TRAIN_DATA" --no-write "${ENGINE_ARGS[@]}" | tee "$WORK/engine-$BENCH_CONFIG.txt"
}

http() {
  "$PYBIN" -m benchmarks.http_load --device "$DEVICE" --model "$WORK/models/ptb-$BENCH_CONFIG" \
    --data-dir "$TRAIN_DATA" --setups batching --endpoints "/score 1" "/score 32" --no-write \
    --json "$WORK/http-$BENCH_CONFIG.json" "${HTTP_ARGS[@]}"
}

report() {
  "$PYBIN" -m benchmarks.gpu_report --work "$WORK" --out "$OUTDIR" --configs $CONFIGS \
    --bench-config "$BENCH_CONFIG" --device "$DEVICE" $([ "$DRY" = 1 ] && echo --dry-run) || return 1
  tar -czf "$OUTDIR/models.tar.gz" -C "$WORK/models" --exclude='*.safetensors' --exclude='.resume*' \
    --exclude='*.tmp' --exclude='*.old' . || return 1
  ls -l "$OUTDIR"
}

choose_python
TRAIN_DATA=$DATA
[ "$DRY" = 1 ] && TRAIN_DATA=$WORK/ptb-short
log "work $WORK, output $OUTDIR, device $DEVICE, configs $CONFIGS, phases $PHASES"
phase setup setup
choose_python   # the setup phase may have made runs/gpu/venv
phase data check_data
start_sampler
phase tests env LM_REQUIRE_CUDA=$((1 - DRY)) "$PYBIN" -m pytest -q -p no:cacheprovider -m cuda tests/unit/test_cuda.py
phase ceiling "$PYBIN" -m benchmarks.ceiling --device "$DEVICE" --size "$CEILING_SIZE" --json "$WORK/ceiling.json"
phase train train_all
phase eval eval_all
phase engine engine
phase http http
stop_sampler
# The logs go in last, so that they hold the report's own log too.
phase report report
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs phases.tsv $(cd "$WORK" && ls gpu-samples.csv 2>/dev/null)
log "done in $(($(date +%s) - START))s; failed phases: ${FAILED[*]:-none}; output in $OUTDIR"
[ ${#FAILED[@]} = 0 ]
