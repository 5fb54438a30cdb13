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
    ids = torch.zeros(len(order), max(lengths, default=0), dtype=torch.long)
    for row, i in enumerate(order):
        ids[row, : lengths[row]] = torch.as_tensor(sequences[i], dtype=torch.long)
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
    """Per predicted token: its natural-log probability and, if asked for, its rank (1 = most probable)."""

    logprobs: Tensor  # (n,) float32
    ranks: Tensor | None = None  # (n,) int64


@torch.inference_mode()
def score_tokens(
    model: LSTMLanguageModel,
    sequences: Sequence[Sequence[int]],
    max_chunk_tokens: int = DEFAULT_MAX_CHUNK_TOKENS,
    ranks: bool = False,
) -> list[TokenScores]:
    """For each sequence s, the scores of s[t+1] given s[:t+1] for t = 0 .. len(s) - 2.

    Every sequence needs at least one token; the first token is context only (e.g. the priming `<eos>`).
    The rank of a token is 1 + the number of words the model found strictly more probable there.
    """
    if not sequences:
        return []
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    out: list[list[tuple[Tensor, Tensor | None]]] = [[] for _ in sequences]
    for start, ids, feats, order in _chunks(model, sequences, max_chunk_tokens):
        b, t = feats.shape[:2]
        targets = ids[:b, start + 1 : start + 1 + t]  # (b, t') with t' = t, or t - 1 at the very end
        t_pred = targets.shape[1]
        # Predictions in this chunk per row; the decoder runs on these positions only, never on padding.
        counts = [max(0, min(t_pred, len(sequences[order[row]]) - 1 - start)) for row in range(b)]
        positions = torch.arange(t_pred)[None, :] < torch.tensor(counts)[:, None]  # (b, t')
        positions = positions.to(feats.device)
        logits = model.decoder(feats[:, :t_pred][positions])  # (n, V), row by row
        target = targets[positions][:, None]  # (n, 1)
        lp = torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, target).squeeze(-1).cpu()
        rk = ((logits > logits.gather(-1, target)).sum(-1) + 1).cpu() if ranks else None
        offset = 0
        for row, n in enumerate(counts):
            if n > 0:
                part = (lp[offset : offset + n], rk[offset : offset + n] if rk is not None else None)
                out[order[row]].append(part)
                offset += n
    results = []
    for parts in out:
        lps = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
        rks = (torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)) if ranks else None
        results.append(TokenScores(lps, rks))
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
    return torch.log_softmax(model.decoder(h[-1]), dim=-1, dtype=torch.float32).cpu()


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
    lp = token_logprobs(model, [seq], max_chunk_tokens)[0]
    return -lp.double().sum().item(), lp.numel()


def perplexity(logprob: float, num_tokens: int) -> float:
    """exp(-logprob / num_tokens): the perplexity of `num_tokens` predictions whose log-probabilities (nats)
    sum to `logprob`."""
    return math.exp(-logprob / num_tokens)
