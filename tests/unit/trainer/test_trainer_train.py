"""The training loop on real PTB slices: it learns, its recorded metrics describe the saved files exactly,
it is deterministic, and an interrupted run resumed gives the uninterrupted run's weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ddp_run import interrupting_windows  # tests/unit/trainer: the Ctrl-C stand-in
from safetensors.torch import load_file

import trainer.train as train_module
from lm.checkpoint import load_checkpoint
from lm.model import LSTMLanguageModel, ModelConfig, native_bf16
from lm.scoring import stream_nll
from lm.vocab import Vocabulary
from trainer.configs import get_config
from trainer.data import load_corpus, read_words
from trainer.errors import TrainerError
from trainer.evaluate import evaluate_split
from trainer.train import RunOptions, TrainingObjective, make_optimizer, resolve_device, train, train_step

SEED = 1234


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def quiet(data_dir: Path, out: Path, **kwargs) -> RunOptions:
    kwargs.setdefault("seed", SEED)
    return RunOptions(data_dir=data_dir, out=out, device="cpu", progress=False, log=lambda _msg: None, **kwargs)


def test_short_training_lowers_validation_perplexity(
    ptb_dir: Path, ptb_short_dir: Path, ptb_vocab: Vocabulary, tmp_path: Path
) -> None:
    config = get_config("test")
    out = tmp_path / "run"

    # The model the run starts from: same seed, same construction, not trained.
    corpus = load_corpus(ptb_short_dir, vocab=ptb_vocab)
    torch.manual_seed(SEED)
    initial = LSTMLanguageModel(ModelConfig(len(ptb_vocab), config.embedding_size, config.hidden_size, 2))
    initial.init_weights(config.init_scale)
    initial.eval()
    nll, n = stream_nll(initial, corpus.valid)
    initial_ppl = math.exp(nll / n)
    assert initial_ppl > 5000  # an untrained model is close to uniform over 10,000 words

    metrics = train(config, quiet(ptb_short_dir, out, max_epochs=2, train_tokens=20_000))

    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    assert [r["lr"] for r in log] == [1.0, 0.5]  # lr_at for the test config: decay 0.5 after epoch 1
    assert log[1]["valid_ppl"] < log[0]["valid_ppl"] < initial_ppl
    assert metrics["valid_ppl"] < initial_ppl / 5
    assert metrics["best_epoch"] == 2
    assert metrics["valid_ppl"] == pytest.approx(log[1]["valid_ppl"], rel=1e-12)

    # The metrics in config.json describe the saved files: a fresh load and evaluation gives the same numbers.
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["metrics"] == metrics
    ckpt = load_checkpoint(out)
    assert ckpt.vocab == ptb_vocab  # built from the real ptb.train.txt
    for split in ("valid", "test"):
        result = evaluate_split(ckpt, ptb_short_dir, split)
        assert abs(result.perplexity - metrics[f"{split}_ppl"]) <= 1e-9 * metrics[f"{split}_ppl"], split
        expected_predictions = len(read_words(ptb_short_dir / f"ptb.{split}.txt")) - 1
        assert result.predictions == metrics[f"{split}_predictions"] == expected_predictions

    training = ckpt.training
    assert training["name"] == "test"
    assert training["seed"] == SEED
    assert training["train_tokens"] == 20_000
    assert training["epochs_completed"] == 2
    sums = dict(line.split()[::-1] for line in (ptb_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert training["data_sha256"]["train"] == sums["ptb.train.txt"]

    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / ".resume").exists()


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Learning curves are not what these tests look at; drawing them would only cost time."""
    monkeypatch.setattr(train_module, "plot_learning_curves", lambda runs, path: None)


# Dropout on, so that the dropout masks (the RNG state) must be restored too for a resumed run to match.
RESUME_CONFIG = {"dropout": 0.3}
RESUME_TOKENS = 4000


def record_epochs(records: dict[int, dict[str, torch.Tensor]]):
    """Wrap _save_resume to keep a copy of the weights at the end of every epoch (best or not)."""
    real = train_module._save_resume

    def save_resume(out: Path, model: LSTMLanguageModel, state, averager=None) -> None:
        records[state.epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        real(out, model, state, averager)

    return save_resume


@pytest.fixture(scope="module")
def straight_run(ptb_tiny_eval_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two epochs without interruption, the reference of the resume and determinism tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    records: dict[int, dict[str, torch.Tensor]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "plot_learning_curves", lambda runs, path: None)
        mp.setattr(train_module, "_save_resume", record_epochs(records))
        metrics = train(
            get_config("test", **RESUME_CONFIG),
            quiet(ptb_tiny_eval_dir, out, max_epochs=2, train_tokens=RESUME_TOKENS),
        )
    assert sorted(records) == [1, 2]
    return out, metrics, records


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_interrupted_run_resumed_equals_the_straight_run(
    straight_run, ptb_tiny_eval_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_plots
) -> None:
    reference, reference_metrics, reference_epochs = straight_run
    out = tmp_path / "run"
    config = get_config("test", **RESUME_CONFIG)

    real_windows = train_module.windows
    epochs_started: list[int] = []
    monkeypatch.setattr(train_module, "windows", interrupting_windows(epochs_started, epoch=2, window=10))
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet(ptb_tiny_eval_dir, out, max_epochs=2, train_tokens=RESUME_TOKENS))
    assert len(epochs_started) == 2
    assert (out / ".resume").is_dir()
    assert [r["epoch"] for r in read_log(out)] == [1]
    assert load_checkpoint(out).training["epochs_completed"] == 1

    monkeypatch.setattr(train_module, "windows", real_windows)
    resumed_epochs: dict[int, dict[str, torch.Tensor]] = {}
    monkeypatch.setattr(train_module, "_save_resume", record_epochs(resumed_epochs))
    metrics = train(config, quiet(ptb_tiny_eval_dir, out, max_epochs=2, train_tokens=RESUME_TOKENS, resume=True))

    # Epoch 2's weights (kept in the checkpoint or not, depending on validation) equal the straight run's.
    assert sorted(resumed_epochs) == [2]
    for name, tensor in reference_epochs[2].items():
        assert torch.equal(resumed_epochs[2][name], tensor), name
    assert any(not torch.equal(reference_epochs[1][k], reference_epochs[2][k]) for k in reference_epochs[1])
    assert_same_weights(out, reference)  # the best-by-validation checkpoint too
    keys = ("epoch", "lr", "train_ppl", "valid_ppl")
    assert [{k: r[k] for k in keys} for r in read_log(out)] == [{k: r[k] for k in keys} for r in read_log(reference)]
    for key in ("valid_ppl", "test_ppl", "train_ppl", "best_epoch", "valid_predictions", "test_predictions"):
        assert metrics[key] == reference_metrics[key], key
    assert not (out / ".resume").exists()


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
    straight_run, ptb_tiny_eval_dir: Path, tmp_path: Path, no_plots
) -> None:
    reference, reference_metrics, _ = straight_run
    config = get_config("test", **RESUME_CONFIG)
    again = train(config, quiet(ptb_tiny_eval_dir, tmp_path / "again", max_epochs=2, train_tokens=RESUME_TOKENS))
    assert_same_weights(tmp_path / "again", reference)
    assert again["valid_ppl"] == reference_metrics["valid_ppl"]

    train(config, quiet(ptb_tiny_eval_dir, tmp_path / "other", max_epochs=2, train_tokens=RESUME_TOKENS, seed=7))
    wa, wb = weights(tmp_path / "other"), weights(reference)
    assert any(not torch.equal(wa[name], wb[name]) for name in wa)


def test_resume_with_nothing_to_resume_is_refused(fake_ptb_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="nothing to resume"):
        train(get_config("test"), quiet(fake_ptb_dir, tmp_path / "never-started", resume=True))


def test_finished_run_cannot_be_resumed_and_is_not_overwritten_silently(
    fake_ptb_dir: Path, tmp_path: Path, no_plots
) -> None:
    out = tmp_path / "run"
    train(get_config("test"), quiet(fake_ptb_dir, out, max_epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "vocab.txt", "train_log.jsonl"} <= before.keys()

    with pytest.raises(TrainerError, match="nothing to resume"):  # a finished run leaves no .resume behind
        train(get_config("test"), quiet(fake_ptb_dir, out, resume=True))
    with pytest.raises(TrainerError, match=r"not empty.*--overwrite"):
        train(get_config("test"), quiet(fake_ptb_dir, out, max_epochs=1))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    train(get_config("test"), quiet(fake_ptb_dir, out, max_epochs=1, seed=99, overwrite=True))
    assert weights(out)["decoder.bias"].tolist() != load_file_bytes_bias(before["model.safetensors"])
    assert len(read_log(out)) == 1  # the old log went with --overwrite


def load_file_bytes_bias(data: bytes) -> list[float]:
    from safetensors.torch import load

    return load(data)["decoder.bias"].tolist()


def test_non_empty_directory_without_overwrite_is_refused(fake_ptb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(TrainerError, match="not empty"):
        train(get_config("test"), quiet(fake_ptb_dir, out))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_of_another_config_is_refused(
    fake_ptb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_plots
) -> None:
    out = tmp_path / "run"
    real_lr_at = train_module.lr_at

    def interrupt_epoch_2(epoch, config):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_lr_at(epoch, config)

    monkeypatch.setattr(train_module, "lr_at", interrupt_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(get_config("test"), quiet(fake_ptb_dir, out, max_epochs=2))
    with pytest.raises(TrainerError, match="'test', not 'small'"):
        train(get_config("small"), quiet(fake_ptb_dir, out, resume=True))


def test_too_few_training_tokens_are_refused(fake_ptb_dir: Path, tmp_path: Path) -> None:
    # batch 4 x 3 tokens: a row of 3 tokens has (3 - 1) // 5 = 0 windows of 5 steps.
    with pytest.raises(TrainerError, match="too few"):
        train(get_config("test"), quiet(fake_ptb_dir, tmp_path / "run", train_tokens=12))


def test_missing_data_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no such data directory"):
        train(get_config("test"), quiet(tmp_path / "nope", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(TrainerError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainerError, match="no CUDA device"):
            resolve_device("cuda")


REGULARISED = {
    "dropout": 0.3,
    "tie_weights": True,
    "locked_dropout": True,
    "embed_dropout": 0.1,
    "weight_drop": 0.2,
    "asgd_start": 2,
    "max_epochs": 3,
    "bf16": True,
}


def test_regularised_run_with_averaging_resumes_exactly_and_serves_tied(
    ptb_tiny_eval_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_plots
) -> None:
    config = get_config("test", **REGULARISED)
    straight = tmp_path / "straight"
    train(config, quiet(ptb_tiny_eval_dir, straight, train_tokens=RESUME_TOKENS))
    log = read_log(straight)
    assert [r["averaged"] for r in log] == [False, True, True]
    ckpt = load_checkpoint(straight)
    assert ckpt.config.tie_weights and ckpt.config.locked_dropout and ckpt.config.weight_drop == 0.2
    assert ckpt.model.decoder.weight is ckpt.model.embedding.weight
    assert ckpt.training["asgd_start"] == 2 and ckpt.training["bf16"] is True
    assert ckpt.training["bf16_applied"] is native_bf16("cpu")

    real_windows = train_module.windows
    out = tmp_path / "resumed"
    monkeypatch.setattr(train_module, "windows", interrupting_windows([], epoch=3, window=5))
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet(ptb_tiny_eval_dir, out, train_tokens=RESUME_TOKENS))
    monkeypatch.setattr(train_module, "windows", real_windows)
    train(config, quiet(ptb_tiny_eval_dir, out, train_tokens=RESUME_TOKENS, resume=True))
    # The averaged parameters survived the interruption: same checkpoint, same log.
    assert_same_weights(out, straight)
    assert [r["valid_ppl"] for r in read_log(out)] == [r["valid_ppl"] for r in log]


def test_train_step_uses_bf16_only_where_native() -> None:
    """With bf16 asked for, a step runs under bf16 autocast where the CPU has native bf16 (a different loss from
    float32), and in float32 elsewhere (the same loss, bit for bit), rather than failing in oneDNN's LSTM."""
    losses = {}
    for bf16 in (False, True):
        config = get_config("test", bf16=bf16)
        torch.manual_seed(0)
        model = LSTMLanguageModel(ModelConfig(50, config.embedding_size, config.hidden_size, config.num_layers))
        x = torch.randint(0, 50, (config.batch_size, config.num_steps))
        hidden = model.initial_state(config.batch_size, torch.device("cpu"))
        losses[bf16], _ = train_step(
            TrainingObjective(model, config.bf16), make_optimizer(model, config), config, x, x.roll(-1, 1), hidden
        )
    assert (losses[True] != losses[False]).item() is native_bf16("cpu")
