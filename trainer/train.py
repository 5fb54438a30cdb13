"""The training loop: SGD with truncated BPTT, the tutorial's schedule, per-epoch validation and resume.

    python -m trainer train --config small --data-dir ../shared/data/ptb --out models/ptb-small

Files written into the output directory:
    config.json, model.safetensors, vocab.txt   the best-by-validation checkpoint (lm.checkpoint format)
    train_log.jsonl                             one JSON line per epoch
    learning_curve.png                          train/valid perplexity per epoch
    .resume/                                    the last finished epoch, for --resume; removed at the end

Any corpus (trainer.data): `--train/--valid/--test` files or a `--data-dir`, a tokenizer and vocabulary
options; under torchrun, data-parallel across processes (trainer.distributed), rank 0 writing the files.
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
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lm.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from lm.model import LSTMLanguageModel, State, detach_state, native_bf16
from lm.model import resolve_device as lm_resolve_device
from lm.scoring import stream_nll
from lm.tokenizers import Tokenizer, TokenizerError, make_tokenizer
from trainer import interrupt
from trainer.averaging import ParameterAverager
from trainer.cache import cached_corpus
from trainer.configs import TrainConfig, lr_at
from trainer.data import Corpus, DataFiles, batchify, load_corpus, num_windows, shard, windows
from trainer.distributed import Ranks, barrier, close, init_process_group, ranks_from_env
from trainer.errors import TrainerError
from trainer.plot import plot_learning_curves

RESUME_DIR = ".resume"
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "learning_curve.png"
DRY_RUN_EVAL_TOKENS = 2000


@dataclass
class RunOptions:
    """How to run a config: where, on what, and how much of it."""

    data_dir: Path | None
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
    # The corpus (trainer.data): files overriding data_dir's, the tokenizer, the vocabulary's limits.
    train_file: Path | None = None
    valid_file: Path | None = None
    test_file: Path | None = None
    tokenizer: dict | str | None = None  # a spec (lm.tokenizers); None: ptb for ptb.*.txt files, else whitespace
    vocab_size: int | None = None  # keep the N most frequent words (<unk> and <eos> included)
    min_count: int = 1  # keep the words seen at least K times
    data_cache: Path | None = None  # encode the splits into files here and train from a memory-mapped view

    def files(self) -> DataFiles:
        return DataFiles.resolve(self.data_dir, self.train_file, self.valid_file, self.test_file)

    def make_tokenizer(self, files: DataFiles) -> Tokenizer:
        spec = self.tokenizer
        if spec is None:
            spec = "ptb" if files.train.name.startswith("ptb.") else "whitespace"
        try:
            return make_tokenizer(spec)
        except TokenizerError as e:
            raise TrainerError(str(e)) from None


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


class TrainingObjective(nn.Module):
    """The model's mean NLL per token on a window, as one module: what DistributedDataParallel wraps (its
    gradient hooks fire on what a forward call computed)."""

    def __init__(self, model: LSTMLanguageModel, bf16: bool = False) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, x: Tensor, y: Tensor, hidden: State) -> tuple[Tensor, State]:
        """x, y (B, T) int64: returns the mean NLL of y (float32 scalar) and the state after the window."""
        # bf16 autocast where the device runs it natively; elsewhere float32 (train() says so once).
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16 and native_bf16(x.device.type)):
            features, hidden = self.model.features(x, hidden)  # (B, T, H)
            # The log-softmax (or the adaptive softmax) in float32 whatever the features' dtype.
            loss = self.model.loss(features.reshape(-1, features.shape[-1]), y.reshape(-1))
        return loss, (hidden[0].float(), hidden[1].float())


def train_step(
    objective: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, x: Tensor, y: Tensor, hidden: State
) -> tuple[Tensor, State]:
    """One step of truncated BPTT on a window (x, y), each (B, T): returns the mean NLL per token (a detached
    scalar) and the state to carry into the next window. `objective` is a TrainingObjective, or one wrapped
    in DistributedDataParallel. The trainer's step, and the one the benchmark times."""
    hidden = detach_state(hidden)  # truncated BPTT: keep the values, drop the history
    loss, hidden = objective(x.long(), y.long(), hidden)
    optimizer.zero_grad(set_to_none=True)
    # The tutorial's cost sums over time steps and averages over the batch: scale the per-token mean by
    # num_steps so that lr=1.0 and the clipping norm mean what they mean in the paper.
    (loss * config.num_steps).backward()  # under DDP: gradients averaged over the ranks here
    nn.utils.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
    optimizer.step()
    return loss.detach(), hidden


@dataclass
class EpochResult:
    train_ppl: float
    tokens: int
    seconds: float


def train_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    batched: Tensor,
    steps: int,
    averager: ParameterAverager | None,
    desc: str,
    show_bar: bool | None,
) -> EpochResult:
    """One pass over this rank's batched stream (B, N): `steps` windows of truncated BPTT, the state carried
    from window to window, the iterates averaged if `averager` is given. The perplexity is this rank's."""
    model: LSTMLanguageModel = (
        objective.module.model if isinstance(objective, DistributedDataParallel) else objective.model
    )
    objective.train()
    hidden = model.initial_state(config.batch_size, batched.device)
    total_nll, total_tokens = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(
        windows(batched, config.num_steps),
        total=steps,
        desc=desc,
        unit="win",
        disable=(not show_bar) if show_bar is not None else None,
        leave=False,
    )
    for step, (x, y) in enumerate(bar):
        interrupt.check()
        if step >= steps:
            break
        loss, hidden = train_step(objective, optimizer, config, x, y, hidden)
        if averager is not None:
            averager.update()
        total_nll += loss.item() * y.numel()
        total_tokens += y.numel()
        if step % 20 == 0:
            elapsed = time.perf_counter() - t0
            bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.1f}", tok_s=f"{total_tokens / elapsed:,.0f}")
    bar.close()
    return EpochResult(math.exp(total_nll / total_tokens), total_tokens, time.perf_counter() - t0)


def _read_corpus(opts: RunOptions, ranks: Ranks) -> tuple[Corpus, DataFiles, Tokenizer, dict[str, str]]:
    """The corpus as id streams (in memory, or memory-mapped from `opts.data_cache`), its files, the tokenizer
    and each file's sha256. With a cache under torchrun, rank 0 writes it and the other ranks map it."""
    if opts.vocab_size is not None and opts.vocab_size < 2:
        raise TrainerError(f"--vocab-size must be at least 2 (<unk> and <eos>), not {opts.vocab_size}")
    if opts.min_count < 1:
        raise TrainerError(f"--min-count must be at least 1, not {opts.min_count}")
    files = opts.files()
    tokenizer = opts.make_tokenizer(files)
    sha256 = files.sha256()
    if opts.data_cache is None:
        corpus = load_corpus(files, tokenizer=tokenizer, vocab_size=opts.vocab_size, min_count=opts.min_count)
        return corpus, files, tokenizer, sha256
    cache = (opts.data_cache, files, tokenizer, opts.vocab_size, opts.min_count, sha256)
    if ranks.is_main:
        corpus = cached_corpus(*cache, log=opts.log)
    barrier(ranks)  # the cache is complete before the other ranks map it
    if not ranks.is_main:
        corpus = cached_corpus(*cache, build=False, log=lambda _msg: None)
    return corpus, files, tokenizer, sha256


def train(config: TrainConfig, opts: RunOptions) -> dict:
    """Train `config`, keep the best-by-validation checkpoint in `opts.out`, evaluate it on test.

    Returns the final metrics (also stored in the checkpoint's config.json); under torchrun, rank 0 does and
    the other ranks return {}.
    """
    ranks = ranks_from_env()
    device = init_process_group(ranks, resolve_device(opts.device))
    try:
        return _train(config, opts, ranks, device)
    finally:
        close(ranks)


def _train(config: TrainConfig, opts: RunOptions, ranks: Ranks, device: torch.device) -> dict:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    corpus, files, tokenizer, sha256 = _read_corpus(opts, ranks)
    if ranks.is_main:
        _prepare_out(opts, config)
    barrier(ranks)  # the other ranks read .resume/ only once rank 0 has checked it
    max_epochs = opts.max_epochs or config.max_epochs
    if opts.dry_run:
        max_epochs = 1
    eval_limit = DRY_RUN_EVAL_TOKENS if opts.dry_run else None

    torch.manual_seed(opts.seed)
    model = LSTMLanguageModel(config.model_config(len(corpus.vocab)))
    model.init_weights(config.init_scale)
    model.to(device)
    averager = ParameterAverager(model) if config.asgd_start is not None else None
    state = _load_resume(opts.out, model, averager) if opts.resume else ResumeState()
    optimizer = make_optimizer(model, config)
    objective: nn.Module = TrainingObjective(model, config.bf16)
    if ranks.distributed:
        objective = DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)

    train_ids = corpus.train[: opts.train_tokens] if opts.train_tokens else corpus.train
    rank_ids = train_ids
    if ranks.distributed:  # this rank's contiguous share: rows r*B .. r*B+B-1 of the combined batch
        rank_ids = shard(train_ids, config.batch_size, ranks.rank, ranks.world_size)
    batched = batchify(rank_ids, config.batch_size).to(device)
    steps = 1 if opts.dry_run else num_windows(batched, config.num_steps)
    if steps < 1:
        raise TrainerError(f"{rank_ids.numel()} training tokens are too few for one window of this config")

    bf16 = config.bf16 and native_bf16(device.type)
    if config.bf16 and not bf16:
        print(f"warning: bf16 asked for, but this {device.type} has no native bf16: float32 instead", file=sys.stderr)
    unk = corpus.unk_tokens()
    training_record = {
        **config.to_dict(),
        "bf16_applied": bf16,
        "seed": opts.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "world_size": ranks.world_size,
        "max_epochs_run": max_epochs,
        "dry_run": opts.dry_run,
        "train_tokens": int(train_ids.numel()),
        "data_files": {s: str(p) for s, p in files.items()},
        "data_sha256": sha256,
        "vocab_size_limit": opts.vocab_size,
        "min_count": opts.min_count,
        "unk_tokens": unk,
        "oov_tokens": corpus.oov,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    log_path = opts.out / LOG_FILE
    show_bar = (opts.progress if opts.progress is not None else None) if ranks.is_main else False
    if ranks.is_main:
        streams = {"train": corpus.train, "valid": corpus.valid, "test": corpus.test}
        opts.log(
            f"vocabulary {len(corpus.vocab):,} words ({tokenizer.name} tokenizer); <unk> tokens: "
            + ", ".join(f"{s} {n:,} of {streams[s].numel():,}" for s, n in unk.items())
        )

    for epoch in range(state.epoch + 1, max_epochs + 1):
        if ranks.distributed:
            # Each rank its own dropout masks, drawn from (seed, rank, epoch) alone: only rank 0's RNG state is
            # saved for --resume, so a resumed epoch must not depend on the RNG of the epochs before it.
            torch.manual_seed(opts.seed + 1_000_003 * ranks.rank + epoch)
        lr = lr_at(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        averaging = averager is not None and epoch >= config.asgd_start
        t0 = time.perf_counter()
        result = train_epoch(
            objective,
            optimizer,
            config,
            batched,
            steps,
            averager if averaging else None,
            f"epoch {epoch}/{max_epochs}",
            show_bar,
        )
        if not ranks.is_main:
            state.epoch = epoch
            barrier(ranks)  # rank 0 validates and writes
            continue
        averaged = averager.swapped() if averaging else contextlib.nullcontext()
        with averaged:  # validate (and checkpoint) the averaged parameters once averaging has begun
            valid_ppl, _ = evaluate_stream(model, corpus.valid.to(device), eval_limit)
        epoch_time = time.perf_counter() - t0
        state.wall_time_s += epoch_time
        tokens_per_s = result.tokens * ranks.world_size / result.seconds
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_ppl": result.train_ppl,
            "valid_ppl": valid_ppl,
            "train_tokens_per_s": tokens_per_s,
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
                    metrics={"train_ppl": result.train_ppl, "valid_ppl": valid_ppl, "best_epoch": epoch},
                    tokenizer=tokenizer.spec(),
                )
        state.epoch = epoch
        _save_resume(opts.out, model, state, averager)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        plot_learning_curves({config.name: state.history}, opts.out / CURVE_FILE)
        opts.log(
            f"epoch {epoch:2d}  lr {lr:.4g}  train ppl {result.train_ppl:8.2f}  valid ppl {valid_ppl:8.2f}"
            f"  {tokens_per_s:,.0f} tok/s  {epoch_time:.0f}s{'  *best' if improved else ''}"
        )
        interrupt.check()
        barrier(ranks)

    if not ranks.is_main:
        return {}
    return _final_metrics(opts, corpus, state, device, eval_limit)


def _final_metrics(opts: RunOptions, corpus: Corpus, state: ResumeState, device: torch.device, eval_limit) -> dict:
    """Evaluate what was saved, read back from disk: the numbers describe the committed files exactly."""
    best = load_checkpoint(opts.out)
    best.model.to(device)
    valid_ppl, valid_n = evaluate_stream(best.model, corpus.valid.to(device), eval_limit)
    test_ppl, test_n = (
        evaluate_stream(best.model, corpus.test.to(device), eval_limit) if corpus.test is not None else (None, 0)
    )
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
    test_part = f"test ppl {test_ppl:.2f} ({test_n:,} predictions)" if test_ppl is not None else "no test file"
    opts.log(f"best epoch {state.best_epoch}: valid ppl {valid_ppl:.2f}, {test_part}")
    return metrics
