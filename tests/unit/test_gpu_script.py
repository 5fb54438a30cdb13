"""benchmarks/gpu.sh on the CPU: the dry run end to end, and a training phase stopped by its budget and resumed.

The GPU runs happen rarely and on borrowed time; these keep the script working in between (`make gpu-dry-run`
is the same dry run by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.sh"


def gpu_sh(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable}
    env.pop("OUT", None)
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_goes_end_to_end_and_packs_at_most_8_files(ptb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = gpu_sh("--dry-run", "--data", str(ptb_dir), "--work", str(tmp_path / "work"), "--out", str(out))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "failed phases: none" in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["logs.tar.gz", "models.tar.gz", "results.json", "results.md"]
    result = json.loads((out / "results.json").read_text())
    assert result["dry_run"] is True and result["device"] == "cpu"
    assert [p["phase"] for p in result["phases"]] == ["data", "tests", "ceiling", "train", "eval", "engine", "http"]
    assert all(p["exit_code"] == 0 for p in result["phases"])
    assert [t["config"] for t in result["training"]] == ["small", "test"]
    assert all(t["finished"] and t["epochs_completed"] == 1 for t in result["training"])
    for config in ("small", "test"):
        assert result["evaluation"][config]["test"]["perplexity"] > 1
    assert all(v > 0 for v in result["ceiling"]["gflops"].values())
    assert "tokens/s" in result["engine"]
    runs = result["http"]["runs"]
    expected = [("/score 1", 2), ("/score 32", 2)]
    assert [(x["endpoint"], x["concurrency"]) for x in runs] == expected
    assert all(x["rps"] > 0 and x["errors"] == 0 and x["mean_batch"] >= 1 for x in runs)
    with tarfile.open(out / "models.tar.gz") as tar:
        names = tar.getnames()
    assert "./ptb-small/train_log.jsonl" in names and "./ptb-test/config.json" in names
    assert not any(n.endswith(".safetensors") for n in names)  # the weights stay where they were trained


def test_training_stopped_at_its_budget_resumes_in_the_next_command(ptb_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    common = ["--dry-run", "--data", str(ptb_dir), "--work", str(work), "--out", str(tmp_path / "out")]
    common += ["--configs", "test", "--train-args", "--train-tokens 1000 --max-epochs 1000 --threads 1"]
    first = gpu_sh(*common, "--phases", "data,train", "--train-budget", "30")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert "test: stopped at the budget (30 s); continue with --resume" in first.stdout
    run = work / "models" / "ptb-test"
    done = len((run / "train_log.jsonl").read_text().splitlines())
    assert done >= 1 and (run / ".resume").is_dir()

    second = gpu_sh(*common, "--phases", "data,train", "--train-budget", "20", "--resume")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    log = (work / "logs" / "train-test.log").read_text()
    assert f"resuming {run} after epoch" in log
    epochs = [json.loads(line)["epoch"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > done  # continued, nothing repeated


@pytest.mark.parametrize("bad", [["--budget", "ten"], ["--frobnicate"]])
def test_bad_options_are_refused_with_one_line(bad: list[str]) -> None:
    r = gpu_sh(*bad, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("gpu.sh: ")
