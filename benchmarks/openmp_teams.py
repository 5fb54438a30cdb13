"""What a second OpenMP team in the process costs a forward pass (service/runner.py's docstring, "Threads").

    python -m benchmarks.openmp_teams                   # 2 threads, 200 sentences, 5 rounds
    python -m benchmarks.openmp_teams --threads 4 --rounds 3

torch's CPU kernels run on GNU libgomp, which gives every thread that starts a parallel region a team of worker
threads of its own; once the process holds more of them than the machine has CPUs, the idle workers stop
spinning between regions and sleep, and each region wakes them again. Each measurement is a fresh process that
runs one-sentence `/score` passes (`ModelRunner.run`, float32, PTB test sentences) one after another in a
thread of their own with `--threads` torch threads, as the service's first forward lane runs a lone client's
passes, in two set-ups, alternately:

- `one team`: the process's main thread runs torch on one thread (`service.runner.leave_threads_to_lanes`),
  as the service's event loop does: the pass's thread leads the only team;
- `two teams`: the main thread has first run one parallel operation on `--threads` threads (as the service's
  event loop did before, when it loaded the checkpoint): its team stays, asleep, beside the pass's.

The figure is the mean milliseconds of a pass in each round, and the median over the rounds; also the OpenMP
workers the process holds (its threads that Python did not start, less those it held before torch ran).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import DEFAULT_DATA_DIR, REPO, table, write_section

MODES = {"one team": "one", "two teams": "two"}

CHILD = r"""
import json, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import torch
from benchmarks.common import foreign_threads
from benchmarks.engine import score_jobs, sentences_ids
from lm.checkpoint import load_checkpoint
from service.runner import ModelRunner, leave_threads_to_lanes
from service.settings import Settings

mode, model, data, threads, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
base = foreign_threads()
if mode == "two":
    torch.set_num_threads(threads)
    torch.log_softmax(torch.randn(64, 10000), -1)  # one parallel region: this thread's team
else:
    leave_threads_to_lanes()
ckpt = load_checkpoint(model)
runner = ModelRunner(ckpt, Settings(model=model, device="cpu", threads=threads, forward_lanes=1))
jobs = [score_jobs([ids]) for ids in sentences_ids(ckpt, data, count)]

def passes():
    runner.lane_width(True)
    runner.run(jobs[0])
    times = []
    for batch in jobs:
        t0 = time.perf_counter()
        runner.run(batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.mean(times)

with ThreadPoolExecutor(1) as lane:
    ms = lane.submit(passes).result()
    print(json.dumps({"ms": ms, "workers": foreign_threads() - base}))
"""


def measure(mode: str, model: str, data_dir: Path, threads: int, sentences: int) -> dict:
    cmd = [sys.executable, "-c", CHILD, mode, model, str(data_dir), str(threads), str(sentences)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/ptb-cpu")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the passes")
    p.add_argument("--sentences", type=int, default=200, help="one-sentence passes per measurement")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    seen: dict[str, list[dict]] = {name: [] for name in MODES}
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
        for name in order:
            result = measure(MODES[name], args.model, args.data_dir, args.threads, args.sentences)
            seen[name].append(result)
            print(f"round {r + 1}  {name}: {result['ms']:.2f} ms a pass, {result['workers']} OpenMP workers")
    medians = {name: statistics.median(x["ms"] for x in results) for name, results in seen.items()}
    rows = [
        [
            name,
            f"{medians[name]:.2f}",
            " / ".join(f"{x['ms']:.2f}" for x in results),
            str(max(x["workers"] for x in results)),
        ]
        for name, results in seen.items()
    ]
    ratio = medians["two teams"] / medians["one team"]
    body = (
        f"One-sentence `/score` passes of `{args.model}` (float32, {args.sentences} PTB test sentences, one after "
        f"another) in a thread of their own on {args.threads} torch threads, each set-up a fresh process, "
        f"{args.rounds} rounds alternated:\n\n"
        + table(["set-up", "median ms a pass", "rounds", "OpenMP workers"], rows)
        + f"\n\nA second team in the process makes a pass {ratio:.2f}x as long.\n"
    )
    print(body)
    if not args.no_write:
        write_section("openmp-teams", "A second OpenMP team", body)


if __name__ == "__main__":
    main()
