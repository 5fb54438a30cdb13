"""Data-parallel training: 2 processes under torchrun (gloo, CPU, loopback only) of B rows each give the
weights one process gives with 2B rows, within float tolerance; each rank's share of the stream is exactly
its rows of the combined batch; and a run interrupted and resumed under torchrun gives the straight run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.common import free_port
from lm.model import LSTMLanguageModel
from trainer.cli import main
from trainer.configs import get_config
from trainer.data import batchify, shard


def test_shards_are_the_rows_of_the_combined_batch() -> None:
    data = torch.arange(103)
    combined = batchify(data, 6)  # 2 ranks x 3 rows
    for rank in range(2):
        assert torch.equal(batchify(shard(data, 3, rank, 2), 3), combined[3 * rank : 3 * rank + 3])


def test_two_ranks_equal_one_process_with_the_combined_batch(fake_ptb_dir: Path, tmp_path: Path) -> None:
    common = ["--config", "test", "--data-dir", str(fake_ptb_dir), "--max-epochs", "1", "--no-progress"]
    single = tmp_path / "single"
    assert main(["train", *common, "--batch-size", "4", "--out", str(single)]) == 0

    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.getcwd()}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "trainer"]
    run = subprocess.run(
        [*launch, "train", *common, "--batch-size", "2", "--out", str(double)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), (name, (a[name] - b[name]).abs().max())
    torch.manual_seed(1234)  # the trainer's default seed: the weights both runs started from
    initial = LSTMLanguageModel(get_config("test").model_config(a["decoder.bias"].numel()))
    initial.init_weights(get_config("test").init_scale)
    assert (initial.state_dict()["decoder.bias"] - a["decoder.bias"]).abs().max() > 1e-3  # training moved them
    meta_a = json.loads((single / "config.json").read_text(encoding="utf-8"))
    meta_b = json.loads((double / "config.json").read_text(encoding="utf-8"))
    assert meta_b["training"]["world_size"] == 2 and meta_b["training"]["batch_size"] == 2
    assert meta_b["training"]["train_tokens"] == meta_a["training"]["train_tokens"]
    assert abs(meta_a["metrics"]["valid_ppl"] - meta_b["metrics"]["valid_ppl"]) < 1e-3 * meta_a["metrics"]["valid_ppl"]


HERE = Path(__file__).parent


def torchrun(worker_args: list[str], train_args: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    """2 CPU ranks of tests/unit/trainer/ddp_run.py (the trainer's CLI with a config override or a Ctrl-C)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.getcwd()}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    argv = [*launch, str(HERE / "ddp_run.py"), *worker_args, "--", "train", *train_args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def test_resumed_run_under_torchrun_equals_the_straight_run(fake_ptb_dir: Path, tmp_path: Path) -> None:
    # Dropout on, so that each rank's dropout masks after the resume must be those of the straight run; the
    # corpus from a data cache that rank 0 writes and the other rank maps (then reused by the later runs).
    common = ["--config", "test", "--data-dir", str(fake_ptb_dir), "--max-epochs", "3", "--batch-size", "2"]
    common += ["--no-progress", "--data-cache", str(tmp_path / "cache")]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run = torchrun(["--dropout", "0.3"], [*common, "--out", str(straight)])
    assert run.returncode == 0, run.stderr[-3000:]

    stopped = torchrun(["--dropout", "0.3", "--interrupt", "3:4"], [*common, "--out", str(resumed)])
    assert stopped.returncode != 0 and "interrupted" in stopped.stderr, stopped.stderr[-3000:]
    assert [r["epoch"] for r in read_log(resumed)] == [1, 2]
    assert json.loads((resumed / ".resume" / "progress.json").read_text(encoding="utf-8"))["epoch"] == 2

    run = torchrun(["--dropout", "0.3"], [*common, "--resume", "--out", str(resumed)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("resuming") == 1 and run.stdout.count("epoch  3") == 1  # rank 0 alone logs

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), (name, (a[name] - b[name]).abs().max())
    keys = ("epoch", "lr", "train_ppl", "valid_ppl")
    log_a, log_b = read_log(straight), read_log(resumed)
    assert [r["epoch"] for r in log_b] == [1, 2, 3]  # one line an epoch: only rank 0 writes
    for ra, rb in zip(log_a, log_b, strict=True):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5), (ra["epoch"], k)
    meta_a = json.loads((straight / "config.json").read_text(encoding="utf-8"))
    meta_b = json.loads((resumed / "config.json").read_text(encoding="utf-8"))
    for k in ("valid_ppl", "test_ppl", "best_epoch"):
        assert meta_b["metrics"][k] == pytest.approx(meta_a["metrics"][k], rel=1e-5), k
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in straight.iterdir())
    assert not (resumed / ".resume").exists()


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
