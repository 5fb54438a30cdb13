"""Data-parallel training: 2 processes under torchrun (gloo, CPU, loopback only) of B rows each give the
weights one process gives with 2B rows, within float tolerance; and each rank's share of the stream is
exactly its rows of the combined batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lm.model import LSTMLanguageModel
from trainer.cli import main
from trainer.configs import get_config
from trainer.data import batchify, shard


def test_shards_are_the_rows_of_the_combined_batch() -> None:
    data = torch.arange(103)
    combined = batchify(data, 6)  # 2 ranks x 3 rows
    for rank in range(2):
        assert torch.equal(batchify(shard(data, 3, rank, 2), 3), combined[3 * rank : 3 * rank + 3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
