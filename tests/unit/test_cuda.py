"""On a real GPU: scoring, training, checkpoints and the service on CUDA agree with the CPU.

Marked `cuda` and skipped where no GPU is present; `benchmarks/gpu.sh` runs them on the GPU machine with
LM_REQUIRE_CUDA=1, which turns the skip into a failure (a machine whose GPU torch cannot see must not pass).

    LM_REQUIRE_CUDA=1 python -m pytest -m cuda tests/unit/test_cuda.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from benchmarks.common import matmul_gflops
from lm.checkpoint import load_checkpoint, save_checkpoint
from lm.scoring import final_states, next_token_logprobs, score_tokens, stream_nll
from service.app import create_app
from service.settings import Settings
from trainer.configs import get_config
from trainer.train import RunOptions, TrainingObjective, make_optimizer, train, train_step

REQUIRED = os.environ.get("LM_REQUIRE_CUDA") == "1"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
SEQS = [[1, 2, 3, 4, 5, 6, 7], [1, 8, 9], [1, 2], [1, 10, 11, 2, 3, 9, 8, 7, 6, 5, 4, 3, 2, 1]]


def test_torch_sees_the_gpu() -> None:
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    assert torch.cuda.device_count() >= 1


def test_scoring_on_the_gpu_equals_the_cpu(make_model) -> None:
    cpu = make_model()
    gpu = make_model().to(CUDA)
    for a, b in zip(score_tokens(cpu, SEQS, ranks=True), score_tokens(gpu, SEQS, ranks=True), strict=True):
        assert b.logprobs.device.type == "cpu"  # results come back to the CPU
        torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.ranks, b.ranks)
    torch.testing.assert_close(next_token_logprobs(gpu, SEQS), next_token_logprobs(cpu, SEQS), atol=1e-4, rtol=1e-4)
    # chunked: a small max_chunk_tokens cuts the sequences into several chunks with the state carried
    nll_cpu, n_cpu = stream_nll(cpu, SEQS[-1] * 20, max_chunk_tokens=16)
    nll_gpu, n_gpu = stream_nll(gpu, torch.tensor(SEQS[-1] * 20, device=CUDA), max_chunk_tokens=16)
    assert n_gpu == n_cpu and nll_gpu == pytest.approx(nll_cpu, rel=1e-4)


def test_final_states_from_gpu_initial_states(make_model) -> None:
    """The prefix cache hands final_states states that live on the GPU."""
    cpu, gpu = make_model(), make_model().to(CUDA)
    h, c = final_states(gpu, [SEQS[0][:3], SEQS[3][:5]])
    states = [(h[:, i], c[:, i]) for i in range(2)]
    h2, _ = final_states(gpu, [SEQS[0][3:], SEQS[3][5:]], states)
    h_ref, _ = final_states(cpu, [SEQS[0], SEQS[3]])
    torch.testing.assert_close(h2.cpu(), h_ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_scoring_on_the_gpu_is_close_to_float32(make_model) -> None:
    cpu = make_model()
    gpu = make_model().to(CUDA, torch.bfloat16)
    for a, b in zip(score_tokens(cpu, SEQS), score_tokens(gpu, SEQS), strict=True):
        assert b.logprobs.dtype == torch.float32
        assert (a.logprobs - b.logprobs).abs().max() < 0.1


@pytest.mark.parametrize("bf16", [False, True])
def test_one_training_step_on_the_gpu(make_model, bf16: bool) -> None:
    config = get_config("test", bf16=bf16)
    model = make_model().to(CUDA).train()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 12, (config.batch_size, config.num_steps + 1), device=CUDA)
    loss, hidden = train_step(
        TrainingObjective(model, config.bf16),
        make_optimizer(model, config),
        config,
        x[:, :-1],
        x[:, 1:],
        model.initial_state(config.batch_size),
    )
    assert torch.isfinite(loss) and loss.device.type == "cuda"
    assert hidden[0].dtype == torch.float32 and hidden[0].device.type == "cuda"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_training_on_the_gpu_writes_a_checkpoint_the_cpu_loads(fake_ptb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    opts = RunOptions(data_dir=fake_ptb_dir, out=out, device="cuda", max_epochs=2, progress=False, log=lambda _: None)
    metrics = train(get_config("test"), opts)
    ckpt = load_checkpoint(out)  # safetensors on the CPU: a GPU run is read on a machine without one
    assert ckpt.training["device"].startswith("cuda")
    assert ckpt.model.embedding.weight.device.type == "cpu"
    assert json.loads((out / "config.json").read_text())["metrics"]["test_ppl"] == metrics["test_ppl"]
    assert 1 < metrics["test_ppl"] < ckpt.config.vocab_size  # better than uniform over the vocabulary


def test_a_gpu_models_checkpoint_loads_on_the_cpu_with_the_same_weights(make_model, tiny_vocab, tmp_path) -> None:
    model = make_model(vocab_size=len(tiny_vocab)).to(CUDA)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, tiny_vocab))
    for name, t in loaded.model.state_dict().items():
        assert t.device.type == "cpu"
        assert torch.equal(t, model.state_dict()[name].cpu())


def test_the_service_on_the_gpu_answers_score_as_on_the_cpu(tiny_checkpoint) -> None:
    body = {"sentences": ["the cat sat on a mat", "a dog ran", "the"], "per_token": True}
    answers = {}
    for device in ("cpu", "cuda"):
        with TestClient(create_app(Settings(model=tiny_checkpoint.path, device=device))) as client:
            r = client.post("/score", json=body)
            assert r.status_code == 200, r.text
            answers[device] = r.json()["results"]
            assert client.get("/model").json()["device"].startswith(device)
            nw = client.post("/next-word", json={"prefix": "the cat", "top_k": 3})
            assert nw.status_code == 200, nw.text
    for a, b in zip(answers["cpu"], answers["cuda"], strict=True):
        assert b["logprob"] == pytest.approx(a["logprob"], abs=1e-3)


def test_the_matmul_ceiling_is_measured_on_the_gpu() -> None:
    assert matmul_gflops(1024, 1024, 1024, torch.bfloat16, repeats=3, device=CUDA) > 0
