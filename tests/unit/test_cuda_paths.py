"""The CUDA code paths' logic, on the CPU: what differs on a GPU is stubbed where it is decided.

Device resolution with `auto`, the out-of-memory split-and-retry (with `torch.cuda.empty_cache` on a GPU),
the GPU's RNG state in the resume files, float32 CPU checkpoints from a model cast elsewhere, the autocast
device type, and the benchmarks' GPU timer. tests/unit/test_cuda.py runs the same paths on a real GPU.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

import trainer.train as train_module
from benchmarks import common
from lm.checkpoint import load_checkpoint, save_checkpoint
from lm.model import native_bf16, resolve_device
from service.runner import ModelRunner, ScoreJob
from service.settings import Settings
from trainer.configs import get_config


def test_auto_is_the_gpu_when_there_is_one_and_the_cpu_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def score_items(tiny_vocab, n: int) -> list[ScoreJob]:
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    seqs = [[tiny_vocab.eos_id, *tiny_vocab.encode(words[: 2 + i % 6]), tiny_vocab.eos_id] for i in range(n)]
    return [ScoreJob(ids) for ids in seqs]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_out_of_memory_retries_in_halves_and_empties_the_gpu_cache(
    tiny_checkpoint, tiny_vocab, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    runner = ModelRunner(load_checkpoint(tiny_checkpoint.path), Settings(model=tiny_checkpoint.path, device="cpu"))
    items = score_items(tiny_vocab, 7)
    expected = [r.logprobs for r in runner.run(items)]

    calls: list[int] = []
    emptied: list[int] = []
    real = ModelRunner._run

    def device_fits_two(self, batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, batch)

    monkeypatch.setattr(ModelRunner, "_run", device_fits_two)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(calls)))
    runner.device = torch.device(device)  # the runner's branch on the device type; the model stays on the CPU
    got = [r.logprobs for r in runner.run(items)]
    assert calls == [7, 3, 1, 2, 4, 2, 2]  # 7 -> 3 + 4, 3 -> 1 + 2, 4 -> 2 + 2
    assert emptied == ([1, 2, 5] if device == "cuda" else [])  # after each failed attempt, on a GPU only
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_out_of_memory_on_one_sequence_is_raised(tiny_checkpoint, tiny_vocab, monkeypatch) -> None:
    runner = ModelRunner(load_checkpoint(tiny_checkpoint.path), Settings(model=tiny_checkpoint.path, device="cpu"))
    runner.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def never_fits(self, batch):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(ModelRunner, "_run", never_fits)
    with pytest.raises(torch.OutOfMemoryError):
        runner.run(score_items(tiny_vocab, 2))


def test_the_gpus_rng_state_is_resumed_only_where_there_is_a_gpu(
    tmp_path: Path, make_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model()
    gpu_state = torch.arange(16, dtype=torch.uint8)
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: gpu_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.append(state))
    train_module._save_resume(tmp_path, model, train_module.ResumeState(epoch=3))

    fresh = make_model(seed=1)
    state = train_module._load_resume(tmp_path, fresh)
    assert state.epoch == 3 and len(restored) == 1 and torch.equal(restored[0], gpu_state)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # A GPU run resumed on a machine without one: the GPU's RNG state is set aside, the rest is restored.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_module._load_resume(tmp_path, make_model(seed=2))
    assert len(restored) == 1


def test_a_checkpoint_of_a_model_cast_to_bfloat16_is_float32_on_the_cpu(tmp_path: Path, make_model, tiny_vocab) -> None:
    model = make_model(vocab_size=len(tiny_vocab)).to(torch.bfloat16)  # as the service casts it on a GPU
    path = save_checkpoint(tmp_path / "ckpt", model, tiny_vocab)
    loaded = load_checkpoint(path)
    assert loaded.model.embedding.weight.device.type == "cpu"
    for name, t in loaded.model.state_dict().items():
        assert t.dtype == torch.float32
        assert torch.equal(t, model.state_dict()[name].float())


def test_train_step_autocasts_on_the_device_of_its_inputs(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The autocast context is asked for the inputs' device type ("cuda" for tensors on a GPU), never "cpu"
    written out: the recorded call is compared with the tensor's own device type."""
    seen: list[tuple[str, torch.dtype, bool]] = []

    def spy(device_type: str, dtype: torch.dtype, enabled: bool = True):
        seen.append((device_type, dtype, enabled))
        return contextlib.nullcontext()  # what is asked for is the point here; test_cuda.py runs bf16 on a GPU

    monkeypatch.setattr(torch, "autocast", spy)
    config = get_config("test", bf16=True)
    model = make_model().train()
    x = torch.randint(0, 12, (config.batch_size, config.num_steps))
    optimizer = train_module.make_optimizer(model, config)
    loss, hidden = train_module.train_step(
        train_module.TrainingObjective(model, config.bf16),
        optimizer,
        config,
        x,
        x,
        model.initial_state(config.batch_size),
    )
    # Enabled where that device runs bf16 natively (lm.model.native_bf16); on other CPUs the step is float32.
    assert seen == [(x.device.type, torch.bfloat16, native_bf16(x.device.type))]
    assert torch.isfinite(loss) and hidden[0].shape == (2, config.batch_size, 8)


def test_benchmark_timer_waits_for_the_gpu_only_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    common.synchronize("cpu")
    assert waited == []
    common.synchronize("cuda")
    assert waited == [torch.device("cuda")]


def test_gpu_report_reads_phases_and_nvidia_smi_samples(tmp_path: Path) -> None:
    import time

    from benchmarks import gpu_report

    t0 = time.mktime(time.strptime("2026/11/28 10:00:00", "%Y/%m/%d %H:%M:%S"))
    (tmp_path / "phases.tsv").write_text(f"train\t{t0}\t{t0 + 2}\t0\nhttp\t{t0 + 2.5}\t{t0 + 4}\t1\n")
    (tmp_path / "gpu-samples.csv").write_text(
        "2026/11/28 10:00:00.500, 40, 5, 1000, 100.0\n"
        "2026/11/28 10:00:01.500, 80, 9, 3000, 300.0\n"
        "2026/11/28 10:00:03.000, 10, 1, 500, [N/A]\n"
        "garbage\n"
    )
    result = gpu_report.build(tmp_path, ["test"], "test", "cuda", dry_run=False)
    train, http = result["phases"]
    assert train["gpu"] == {"samples": 2, "gpu_util_mean": 60.0, "gpu_util_max": 80.0, "memory_used_max_mib": 3000}
    assert http["gpu"]["gpu_util_mean"] == 10.0 and http["exit_code"] == 1
    assert result["training"] == [{"config": "test", "checkpoint": False}]
    text = gpu_report.markdown(result)
    assert "| train | 2 | 0 | 60 | 80 | 3,000 |" in text
    assert json.dumps(result)  # results.json is plain JSON
