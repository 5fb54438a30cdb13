"""Training speed: the trainer's own step (`trainer.train.train_step`) against a plain reference loop.

    python benchmarks/training.py                       # small and medium, fp32 and bf16
    python benchmarks/training.py --configs small --rounds 3 --no-write

The reference is written the way PyTorch's word-language-model example trains: an `nn.Module` of embedding,
dropout, `nn.LSTM` (time-major), dropout, linear and log-softmax; `NLLLoss`; `model.zero_grad()`; gradient
clipping; and an SGD update written as a loop over the parameters. Both train on the same PTB windows with the
same shapes (batch, window, sizes, dropout of the config). Rounds alternate (ours, reference, ours, ...) so
that drift of a shared machine hits both alike; each figure is the median over rounds of tokens per second.
The reference in bf16 is the same loop with its forward pass under `torch.autocast(bfloat16)`, the change a
user of the example would make.

The ceiling is the best GFLOP/s of the step's large matmuls (the decoder and its two gradients, the LSTM input
projection) in the same dtype, measured in this run; a training step is counted as 3x the forward FLOPs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    DEFAULT_DATA_DIR,
    ceiling_gflops,
    median,
    model_matmul_shapes,
    table,
    training_flops,
    write_section,
)
from lm.model import LSTMLanguageModel, ModelConfig
from lm.vocab import Vocabulary
from trainer.configs import get_config
from trainer.data import batchify, encode_split, read_words, split_path
from trainer.train import TrainingObjective, make_optimizer, train_step


class ReferenceRNN(nn.Module):
    """The example's RNNModel, LSTM case: time-major, log-softmax output."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, inp, hidden):
        emb = self.drop(self.encoder(inp))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    return tuple(v.detach() for v in h)


def reference_round(model, source_tm, hidden, steps, num_steps, lr, clip, bf16) -> tuple[int, object]:
    """`steps` windows of the example's training loop over time-major data; returns (tokens, hidden)."""
    criterion = nn.NLLLoss()
    model.train()
    tokens = 0
    for i in range(steps):
        s = i * num_steps
        data, targets = source_tm[s : s + num_steps], source_tm[s + 1 : s + 1 + num_steps].reshape(-1)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
            output, hidden = model(data, hidden)
        hidden = tuple(v.float() for v in hidden)
        loss = criterion(output.float(), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        loss.item()
        tokens += targets.numel()
    return tokens, hidden


def ours_round(model, optimizer, config, source, hidden, steps) -> tuple[int, object]:
    model.train()
    objective = TrainingObjective(model, config.bf16)
    tokens = 0
    for i in range(steps):
        s = i * config.num_steps
        x, y = source[:, s : s + config.num_steps], source[:, s + 1 : s + 1 + config.num_steps]
        loss, hidden = train_step(objective, optimizer, config, x, y, hidden)
        loss.item()
        tokens += y.numel()
    return tokens, hidden


def bench_config(name: str, dtype: str, train_ids, vocab_size: int, rounds: int, steps: int) -> dict:
    config = replace(get_config(name), bf16=dtype == "bf16")
    torch.manual_seed(0)
    model = LSTMLanguageModel(
        ModelConfig(vocab_size, config.embedding_size, config.hidden_size, config.num_layers, config.dropout)
    )
    model.init_weights(config.init_scale)
    optimizer = make_optimizer(model, config)
    ref = ReferenceRNN(vocab_size, config.embedding_size, config.hidden_size, config.num_layers, config.dropout)
    source = batchify(train_ids, config.batch_size)  # (B, N): the trainer's layout
    source_tm = source.t().contiguous()  # (N, B): the example's
    h_ours = model.initial_state(config.batch_size)
    h_ref = ref.init_hidden(config.batch_size)
    bf16 = dtype == "bf16"
    # Warm-up: one round of each, untimed.
    _, h_ours = ours_round(model, optimizer, config, source, h_ours, 2)
    _, h_ref = reference_round(ref, source_tm, h_ref, 2, config.num_steps, 1.0, config.max_grad_norm, bf16)
    ours, theirs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n, h_ours = ours_round(model, optimizer, config, source, h_ours, steps)
        ours.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n, h_ref = reference_round(ref, source_tm, h_ref, steps, config.num_steps, 1.0, config.max_grad_norm, bf16)
        theirs.append(n / (time.perf_counter() - t0))
    return {"ours": median(ours), "reference": median(theirs), "config": config}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["small", "medium"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per model")
    p.add_argument("--steps", type=int, default=15, help="training windows per round")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    vocab = Vocabulary.build(read_words(split_path(args.data_dir, "train")))
    train_ids = encode_split(split_path(args.data_dir, "train"), vocab).long()
    rows, measured = [], {}
    for name in args.configs:
        c = get_config(name)
        shapes = model_matmul_shapes(c.batch_size * c.num_steps, len(vocab), c.embedding_size, c.hidden_size, True)
        ceiling, best = {}, {}
        for d in args.dtypes:
            ceiling[d], best[d] = ceiling_gflops(shapes, torch.float32 if d == "fp32" else torch.bfloat16)
        flops = training_flops(len(vocab), c.embedding_size, c.hidden_size, c.num_layers)
        for dtype in args.dtypes:
            r = bench_config(name, dtype, train_ids, len(vocab), args.rounds, args.steps)
            gflops = r["ours"] * flops / 1e9
            row = [
                name,
                dtype,
                f"{r['ours']:,.0f}",
                f"{r['reference']:,.0f}",
                f"{r['ours'] / r['reference']:.2f}x",
                f"{gflops:.0f}",
                f"{ceiling[dtype]:.0f} ({best[dtype][0]}x{best[dtype][1]} @ {best[dtype][1]}x{best[dtype][2]})",
                f"{gflops / ceiling[dtype]:.0%}",
            ]
            if "fp32" in ceiling:
                row.append(f"{gflops / ceiling['fp32']:.0%}")
            rows.append(row)
            measured[(name, dtype)] = r
            print("  ".join(row), flush=True)
    header = ["config", "dtype", "ours tok/s", "reference tok/s", "ours / ref", "ours GFLOP/s", "ceiling GFLOP/s"]
    header += ["of ceiling"] + (["of fp32 ceiling"] if "fp32" in args.dtypes else [])
    body = table(header, rows)
    for name in args.configs:
        if (name, "bf16") in measured and (name, "fp32") in measured:
            ours, ref = measured[(name, "bf16")]["ours"], measured[(name, "fp32")]["reference"]
            body += (
                f"\n\n{name}: ours in bf16 autocast (float32 log-softmax) / the reference as the example is "
                f"written (float32): **{ours / ref:.2f}x**."
            )
    print(body)
    if not args.no_write:
        write_section(
            "training",
            "Training speed",
            "Tokens per second of one training step (forward, backward, clipping, SGD update), the trainer's "
            "`train_step` against the reference loop (see the script's docstring), medians of "
            f"{args.rounds} alternating rounds of {args.steps} windows. GFLOP/s counts 3x the forward "
            "matmul FLOPs per token; the ceiling is the best of the step's large matmuls (decoder forward and "
            "gradients, LSTM input projection) in the same dtype, measured in the same run.\n\n" + body,
        )


if __name__ == "__main__":
    main()
