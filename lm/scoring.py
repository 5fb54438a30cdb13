"""Exact, batched, bounded-memory scoring with a trained model.

Sequences of different lengths are right-padded into one batch; the LSTM is causal, so padding after a
sequence's end cannot change any of its results. Long batches are fed in chunks of time steps with the state
carried, so memory is bounded by `max_chunk_tokens` whatever the length, and the answer equals one pass.
The log-softmax is always computed in float32, whatever dtype the model runs in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from lm.model import LSTMLanguageModel, State

LN10 = math.log(10)  # log10(p) = ln(p) / LN10, as KenLM and SRILM report it
DEFAULT_MAX_CHUNK_TOKENS = 8192
MIN_CHUNK_STEPS = 16
MIN_CHUNK_TOKENS = 1024


def _sorted_padded(sequences: Sequence[Sequence[int]], device: torch.device) -> tuple[list[int], list[int], Tensor]:
    """(order, lengths, ids): rows sorted longest first (row r holds sequence order[r], of lengths[r] tokens),
    right-padded with zeros into ids (B, longest) on `device`."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    lengths = [len(sequences[i]) for i in order]
    longest = max(lengths, default=0)
    # One tensor from padded Python lists (one op, not two per row: a batch's rows are many small sequences).
    listed = [s.tolist() if isinstance(s, Tensor) else list(s) for s in sequences]
    rows = [listed[i] + [0] * (longest - n) for i, n in zip(order, lengths, strict=True)]
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(order), longest)
    return order, lengths, ids.to(device)


def _chunks(
    model: LSTMLanguageModel, sequences: Sequence[Sequence[int]], max_chunk_tokens: int
) -> Iterator[tuple[int, Tensor, Tensor, list[int]]]:
    """Run the LSTM over the sequences; yield (start, ids (B, T_all), features (b, t, H), order) per chunk.

    Rows are sorted longest first (`order[i]` is the input index of row i), and a row leaves the batch once
    its sequence has ended, so late chunks carry only the long sequences.
    """
    order, lengths, ids = _sorted_padded(sequences, model.embedding.weight.device)
    longest = lengths[0]
    state = None
    start = 0
    while start < longest:
        active = sum(1 for n in lengths if n > start)  # a prefix of the rows: they are sorted
        # Up to where the shortest active row ends, but at least MIN_CHUNK_TOKENS / rows (and MIN_CHUNK_STEPS):
        # rows leave at chunk boundaries, so long chunks compute padding, and short ones pay per-call overhead.
        step = max(MIN_CHUNK_STEPS, MIN_CHUNK_TOKENS // active, lengths[active - 1] - start)
        step = max(1, min(step, max_chunk_tokens // active))
        if state is not None and state[0].shape[1] != active:
            state = (state[0][:, :active].contiguous(), state[1][:, :active].contiguous())
        feats, state = model.features(ids[:active, start : start + step], state)
        yield start, ids, feats, order
        start += step


@dataclass
class TokenScores:
    """Per predicted token: its natural-log probability and, if asked for, its rank (1 = most probable) and the
    k most probable words there (`top_logprobs` read from the same log-softmax row as `logprobs`, bit for bit)."""

    logprobs: Tensor  # (n,) float32
    ranks: Tensor | None = None  # (n,) int64
    top_logprobs: Tensor | None = None  # (n, k) float32, most probable first
    top_ids: Tensor | None = None  # (n, k) int64

    @cached_property
    def total(self) -> float:
        """The sum of `logprobs` in float64: the sequence's log-probability, as `/score`, the trainer's evaluation
        and `stream_nll` report it (computed once, where first asked: the service's runner asks in its forward
        thread, so that the event loop runs no tensor op for it)."""
        return float(self.logprobs.double().sum())


@torch.inference_mode()
def score_tokens(
    model: LSTMLanguageModel,
    sequences: Sequence[Sequence[int]],
    max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
    ranks: bool = False,
    top: int = 0,
) -> list[TokenScores]:
    """For each sequence s, the scores of s[t+1] given s[:t+1] for t = 0 .. len(s) - 2.

    Every sequence needs at least one token; the first token is context only (e.g. the priming `<eos>`).
    The rank of a token is 1 + the number of words the model found strictly more probable there; `top` > 0 adds
    the `top` most probable words at each position.
    """
    if not sequences:
        return []
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    out: list[list[tuple[Tensor, ...]]] = [[] for _ in sequences]
    k = min(top, model.config.vocab_size)
    for start, ids, feats, order in _chunks(model, sequences, max_chunk_tokens):
        b, t = feats.shape[:2]
        targets = ids[:b, start + 1 : start + 1 + t]  # (b, t') with t' = t, or t - 1 at the very end
        t_pred = targets.shape[1]
        # Predictions in this chunk per row; the decoder runs on these positions only, never on padding.
        counts = [max(0, min(t_pred, len(sequences[order[row]]) - 1 - start)) for row in range(b)]
        positions = torch.arange(t_pred)[None, :] < torch.tensor(counts)[:, None]  # (b, t')
        positions = positions.to(feats.device)
        logdist = model.log_probs(feats[:, :t_pred][positions])  # (n, V) float32, row by row
        target = targets[positions][:, None]  # (n, 1)
        lp_target = logdist.gather(-1, target)  # (n, 1)
        columns = [lp_target.squeeze(-1).cpu()]
        empty = torch.zeros(len(target), 0)
        columns.append(((logdist > lp_target).sum(-1) + 1).cpu() if ranks else empty)
        # The alternatives come from the same float32 row as the target's log-prob: equal values, bit for bit.
        top_v, top_i = torch.topk(logdist, k, dim=-1) if k else (empty, empty.long())
        columns += [top_v.cpu(), top_i.cpu()]
        # Each row's part of each column, as views: one split per column, not one slice per row and column.
        rows = [row for row, n in enumerate(counts) if n > 0]
        sizes = [counts[row] for row in rows]
        for row, *part in zip(rows, *(c.split(sizes) for c in columns), strict=True):
            out[order[row]].append(tuple(part))
    results = []
    for parts in out:
        if not parts:  # a one-token sequence: nothing predicted
            parts = [(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, k), torch.zeros(0, k).long())]
        # A sequence scored in one chunk (most) has one part: its views as they are; several are concatenated.
        lps, rks, tvs, tis = parts[0] if len(parts) == 1 else (torch.cat(column) for column in zip(*parts, strict=True))
        results.append(TokenScores(lps, rks if ranks else None, tvs if k else None, tis if k else None))
    return results


def token_logprobs(
    model: LSTMLanguageModel,
    sequences: Sequence[Sequence[int]],
    max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
) -> list[Tensor]:
    """For each sequence s, the natural-log probabilities log p(s[t+1] | s[:t+1]) for t = 0 .. len(s) - 2.

    Returns float32 CPU tensors of length len(s) - 1, in input order (see `score_tokens`).
    """
    return [s.logprobs for s in score_tokens(model, sequences, max_chunk_tokens)]


@torch.inference_mode()
def final_states(
    model: LSTMLanguageModel,
    sequences: Sequence[Sequence[int]],
    initial: Sequence[State | None] | None = None,
    max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
) -> State:
    """The LSTM state (h, c), each (L, B, H), after the last token of each sequence, in input order.

    Sequence i starts from `initial[i]` (a pair of (L, H) tensors: the state after some earlier tokens) or, if
    that is None, from zeros; a sequence with an initial state may be empty (its state is returned as given).
    Rows are packed, so each row's state is taken after its own last token, not after the padding.
    """
    layers, hidden = model.config.num_layers, model.config.hidden_size
    weight = model.embedding.weight
    batch = len(sequences)
    initial = list(initial) if initial is not None else [None] * batch
    if len(initial) != batch:
        raise ValueError(f"{batch} sequences but {len(initial)} initial states")
    if any(len(s) == 0 and st is None for s, st in zip(sequences, initial, strict=True)):
        raise ValueError("a sequence without an initial state needs at least one token")
    order, lengths, ids = _sorted_padded(sequences, weight.device)
    h = torch.zeros(layers, batch, hidden, dtype=weight.dtype, device=weight.device)
    c = torch.zeros_like(h)
    for row, i in enumerate(order):
        if initial[i] is not None:
            h[:, row], c[:, row] = initial[i][0], initial[i][1]
    start = 0
    while (active := sum(1 for n in lengths if n > start)) > 0:  # a prefix of the rows: they are sorted
        step = max(1, max_chunk_tokens // active)
        steps = [min(n - start, step) for n in lengths[:active]]
        if max(steps) == 1:  # one word more for every row (type-ahead): the cells directly, 3x faster
            x = model.embedding(ids[:active, start])
            for k in range(layers):
                weights = [getattr(model.lstm, f"{w}_l{k}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                h[k, :active], c[k, :active] = torch.lstm_cell(x, (h[k, :active], c[k, :active]), *weights)
                x = h[k, :active]
        else:
            x = model.embedding(ids[:active, start : start + max(steps)])
            packed = nn.utils.rnn.pack_padded_sequence(x, steps, batch_first=True, enforce_sorted=True)
            _, (h_a, c_a) = model.lstm(packed, (h[:, :active].contiguous(), c[:, :active].contiguous()))
            h[:, :active], c[:, :active] = h_a, c_a
        start += step
    inverse = torch.argsort(torch.as_tensor(order)).to(weight.device)  # sequence i is in row inverse[i]
    return h[:, inverse], c[:, inverse]


@torch.inference_mode()
def next_from_states(model: LSTMLanguageModel, h: Tensor) -> Tensor:
    """The float32 log-distribution (B, V) of the next token, from the LSTM state h (L, B, H)."""
    return model.log_probs(h[-1]).cpu()


@torch.inference_mode()
def next_token_logprobs(
    model: LSTMLanguageModel,
    sequences: Sequence[Sequence[int]],
    max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
) -> Tensor:
    """For each sequence, the float32 log-distribution (V,) of the token that follows it: returns (B, V)."""
    if not sequences:
        return torch.zeros(0, model.config.vocab_size)
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    h, _ = final_states(model, sequences, max_chunk_tokens=max_chunk_tokens)
    return next_from_states(model, h)


def stream_nll(
    model: LSTMLanguageModel, ids: Sequence[int] | Tensor, max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS
) -> tuple[float, int]:
    """Total negative log-likelihood (nats) and prediction count of one stream, state carried throughout.

    Every token after the first is predicted once: the evaluation of docs/architecture.md (what the numbers mean).
    """
    seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    scores = score_tokens(model, [seq], max_chunk_tokens)[0]
    return -scores.total, scores.logprobs.numel()


def perplexity(logprob: float, num_tokens: int) -> float:
    """exp(-logprob / num_tokens): the perplexity of `num_tokens` predictions whose log-probabilities (nats)
    sum to `logprob`."""
    return math.exp(-logprob / num_tokens)
