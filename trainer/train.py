"""The training loop: SGD with truncated BPTT, the tutorial's schedule, per-epoch validation and resume.

    python -m trainer train --config small --data-dir ../shared/data/ptb --out models/ptb-small

Files written into the output directory:
    config.json, model.safetensors, vocab.txt   the best-by-validation checkpoint (lm.checkpoint format)
    train_log.jsonl                             one JSON line per epoch
    learning_curve.png                          train/valid perplexity per epoch
    .resume/                                    the last finished epoch, for --resume; removed at the end
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from lm.checkpoint import load_checkpoint, save_checkpoint, sha256_file, update_metrics
from lm.model import LSTMLanguageModel, ModelConfig, State, detach_state, native_bf16
from lm.model import resolve_device as lm_resolve_device
from lm.scoring import stream_nll
from trainer.averaging import ParameterAverager
from trainer.configs import TrainConfig, lr_at
from trainer.data import SPLITS, batchify, load_corpus, num_windows, split_path, windows
from trainer.errors import TrainerError
from trainer.plot import plot_learning_curves

RESUME_DIR = ".resume"
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "learning_curve.png"
DRY_RUN_EVAL_TOKENS = 2000


@dataclass
class RunOptions:
    """How to run a config: where, on what, and how much of it."""

    data_dir: Path
    out: Path
    device: str = "auto"
    threads: int | None = None
    seed: int = 1234
    max_epochs: int | None = None
    dry_run: bool = False  # one window of training and a short evaluation: the real code path in seconds
    train_tokens: int | None = None  # train on the first N tokens only (quick experiments)
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    log: callable = print  # type: ignore[valid-type]


@dataclass
class ResumeState:
    epoch: int = 0  # last finished epoch
    best_valid_ppl: float = math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    asgd_count: int = 0


def resolve_device(name: str) -> torch.device:
    try:
        return lm_resolve_device(name)
    except ValueError as e:
        raise TrainerError(f"--{e}") from None


def perplexity(nll: float, count: int) -> float:
    return math.exp(nll / count)


def evaluate_stream(model: LSTMLanguageModel, ids: torch.Tensor, limit: int | None = None) -> tuple[float, int]:
    """(perplexity, predictions) of a split as one stream, state carried from first token to last."""
    was_training = model.training
    model.eval()
    try:
        nll, count = stream_nll(model, ids[:limit] if limit else ids)
    finally:
        model.train(was_training)
    return perplexity(nll, count), count


def _save_resume(
    out: Path, model: LSTMLanguageModel, state: ResumeState, averager: ParameterAverager | None = None
) -> None:
    """The last finished epoch: weights, RNG state and progress, written atomically (no pickle)."""
    tmp = out / (RESUME_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if averager is not None:
        tensors.update(averager.state_tensors())
        state.asgd_count = averager.count
    tensors["__rng_cpu__"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["__rng_cuda__"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "progress.json").write_text(json.dumps(state.__dict__, indent=1), encoding="utf-8")
    final = out / RESUME_DIR
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _load_resume(out: Path, model: LSTMLanguageModel, averager: ParameterAverager | None = None) -> ResumeState:
    d = out / RESUME_DIR
    try:
        tensors = load_file(str(d / "state.safetensors"))
        progress = json.loads((d / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainerError(f"{d}: unreadable resume state ({e}); start over with --overwrite") from None
    torch.set_rng_state(tensors.pop("__rng_cpu__"))
    cuda_rng = tensors.pop("__rng_cuda__", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    avg = {k: tensors.pop(k) for k in list(tensors) if k.startswith("__avg__.")}
    try:
        model.load_state_dict(tensors)
        if averager is not None and avg:
            averager.load_state_tensors(avg, progress.get("asgd_count", 0))
    except (RuntimeError, KeyError) as e:
        raise TrainerError(f"{d}: resume state does not fit this config ({str(e).splitlines()[0]})") from None
    return ResumeState(**progress)


def _prepare_out(opts: RunOptions, config: TrainConfig) -> None:
    out = opts.out
    resume_dir = out / RESUME_DIR
    if opts.resume:
        if not resume_dir.is_dir():
            raise TrainerError(f"{out}: nothing to resume (no unfinished run there)")
        try:
            progress = json.loads((resume_dir / "progress.json").read_text(encoding="utf-8"))
            saved = json.loads((out / "config.json").read_text(encoding="utf-8")).get("training", {})
        except (OSError, ValueError) as e:
            raise TrainerError(f"{out}: unreadable run state ({e}); start over with --overwrite") from None
        if saved.get("name") != config.name:
            raise TrainerError(f"{out}: the unfinished run is config {saved.get('name')!r}, not {config.name!r}")
        opts.log(f"resuming {out} after epoch {progress['epoch']}")
        return
    if out.exists() and any(out.iterdir()):
        if not opts.overwrite:
            hint = "pass --resume to continue it, or" if resume_dir.is_dir() else "pass"
            raise TrainerError(f"{out} is not empty; {hint} --overwrite to start over")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def make_optimizer(model: LSTMLanguageModel, config: TrainConfig) -> torch.optim.SGD:
    """Plain SGD at the config's learning rate (the schedule sets it per epoch)."""
    return torch.optim.SGD(model.parameters(), lr=config.lr)


def train_step(
    model: LSTMLanguageModel, optimizer: torch.optim.Optimizer, config: TrainConfig, x: Tensor, y: Tensor, hidden: State
) -> tuple[Tensor, State]:
    """One step of truncated BPTT on a window (x, y), each (B, T): returns the mean NLL per token (a detached
    scalar) and the state to carry into the next window. The trainer's step, and the one the benchmark times."""
    hidden = detach_state(hidden)  # truncated BPTT: keep the values, drop the history
    # bf16 autocast where the device runs it natively; elsewhere float32 (train() says so once).
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.bf16 and native_bf16(x.device.type)):
        logits, hidden = model(x, hidden)  # (B, T, V)
    hidden = (hidden[0].float(), hidden[1].float())
    # Mean NLL per token, the log-softmax in float32 whatever the logits' dtype (read, not copied, from bf16).
    loss = F.nll_loss(F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1, dtype=torch.float32), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    # The tutorial's cost sums over time steps and averages over the batch: scale the per-token mean by
    # num_steps so that lr=1.0 and the clipping norm mean what they mean in the paper.
    (loss * config.num_steps).backward()
    nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    return loss.detach(), hidden


def train(config: TrainConfig, opts: RunOptions) -> dict:
    """Train `config`, keep the best-by-validation checkpoint in `opts.out`, evaluate it on test.

    Returns the final metrics (also stored in the checkpoint's config.json).
    """
    device = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    corpus = load_corpus(opts.data_dir)
    _prepare_out(opts, config)
    max_epochs = opts.max_epochs or config.max_epochs
    if opts.dry_run:
        max_epochs = 1
    eval_limit = DRY_RUN_EVAL_TOKENS if opts.dry_run else None

    torch.manual_seed(opts.seed)
    model_config = ModelConfig(
        vocab_size=len(corpus.vocab),
        embed_size=config.embedding_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        tie_weights=config.tie_weights,
        dropout_input=config.dropout_input,
        dropout_between=config.dropout_between,
        dropout_output=config.dropout_output,
        locked_dropout=config.locked_dropout,
        embed_dropout=config.embed_dropout,
        weight_drop=config.weight_drop,
    )
    model = LSTMLanguageModel(model_config)
    model.init_weights(config.init_scale)
    model.to(device)
    averager = ParameterAverager(model) if config.asgd_start is not None else None
    state = _load_resume(opts.out, model, averager) if opts.resume else ResumeState()
    optimizer = make_optimizer(model, config)

    train_ids = corpus.train[: opts.train_tokens] if opts.train_tokens else corpus.train
    batched = batchify(train_ids, config.batch_size).to(device)
    steps = 1 if opts.dry_run else num_windows(batched, config.num_steps)
    if steps < 1:
        raise TrainerError(f"{train_ids.numel()} training tokens are too few for one window of this config")

    bf16 = config.bf16 and native_bf16(device.type)
    if config.bf16 and not bf16:
        print(f"warning: bf16 asked for, but this {device.type} has no native bf16: float32 instead", file=sys.stderr)
    training_record = {
        **config.to_dict(),
        "bf16_applied": bf16,
        "seed": opts.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "max_epochs_run": max_epochs,
        "dry_run": opts.dry_run,
        "train_tokens": int(train_ids.numel()),
        "data_sha256": {s: sha256_file(split_path(opts.data_dir, s)) for s in SPLITS},
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    log_path = opts.out / LOG_FILE
    show_bar = opts.progress if opts.progress is not None else None  # tqdm: None = only on a terminal

    for epoch in range(state.epoch + 1, max_epochs + 1):
        lr = lr_at(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        averaging = averager is not None and epoch >= config.asgd_start
        hidden = model.initial_state(config.batch_size, device)
        total_nll, total_tokens = 0.0, 0
        t0 = time.perf_counter()
        bar = tqdm(
            windows(batched, config.num_steps),
            total=steps,
            desc=f"epoch {epoch}/{max_epochs}",
            unit="win",
            disable=(not show_bar) if show_bar is not None else None,
            leave=False,
        )
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            loss, hidden = train_step(model, optimizer, config, x, y, hidden)
            if averaging:
                averager.update()
            total_nll += loss.item() * y.numel()
            total_tokens += y.numel()
            if step % 20 == 0:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.1f}", tok_s=f"{total_tokens / elapsed:,.0f}")
        bar.close()
        train_time = time.perf_counter() - t0
        train_ppl = math.exp(total_nll / total_tokens)
        averaged = averager.swapped() if averaging else contextlib.nullcontext()
        with averaged:  # validate (and checkpoint) the averaged parameters once averaging has begun
            valid_ppl, _ = evaluate_stream(model, corpus.valid.to(device), eval_limit)
        epoch_time = time.perf_counter() - t0
        state.wall_time_s += epoch_time
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_ppl": train_ppl,
            "valid_ppl": valid_ppl,
            "train_tokens_per_s": total_tokens / train_time,
            "epoch_time_s": epoch_time,
            "averaged": averaging,
        }
        state.history.append(record)
        improved = valid_ppl < state.best_valid_ppl
        if improved:
            state.best_valid_ppl, state.best_epoch = valid_ppl, epoch
            with averager.swapped() if averaging else contextlib.nullcontext():
                save_checkpoint(
                    opts.out,
                    model,
                    corpus.vocab,
                    training={**training_record, "epochs_completed": epoch, "best_epoch": epoch},
                    metrics={"train_ppl": train_ppl, "valid_ppl": valid_ppl, "best_epoch": epoch},
                )
        state.epoch = epoch
        _save_resume(opts.out, model, state, averager)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        plot_learning_curves({config.name: state.history}, opts.out / CURVE_FILE)
        opts.log(
            f"epoch {epoch:2d}  lr {lr:.4g}  train ppl {train_ppl:8.2f}  valid ppl {valid_ppl:8.2f}"
            f"  {total_tokens / train_time:,.0f} tok/s  {epoch_time:.0f}s{'  *best' if improved else ''}"
        )

    # Evaluate what was saved, read back from disk: the numbers describe the committed files exactly.
    best = load_checkpoint(opts.out)
    best.model.to(device)
    valid_ppl, valid_n = evaluate_stream(best.model, corpus.valid.to(device), eval_limit)
    test_ppl, test_n = evaluate_stream(best.model, corpus.test.to(device), eval_limit)
    best_record = state.history[state.best_epoch - 1] if state.best_epoch else {}
    metrics = {
        "train_ppl": best_record.get("train_ppl"),
        "valid_ppl": valid_ppl,
        "test_ppl": test_ppl,
        "best_epoch": state.best_epoch,
        "valid_predictions": valid_n,
        "test_predictions": test_n,
        "wall_time_s": round(state.wall_time_s, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    update_metrics(opts.out, metrics)
    shutil.rmtree(opts.out / RESUME_DIR, ignore_errors=True)
    opts.log(
        f"best epoch {state.best_epoch}: valid ppl {valid_ppl:.2f}, test ppl {test_ppl:.2f} ({test_n:,} predictions)"
    )
    return metrics
