"""The model code a framework's user writes around the checkpoint: plain torch, no engine of this project.

Load the weights and vocabulary, normalise each text with `lm.normalize`, pad the batch, one forward pass,
log-softmax, gather. `/score` answers each sentence's log-probability (the `<eos>`-primed sentence and its
`<eos>`, as the service scores it); `/next-word` the `top_k` most probable next words after a prefix.
Both peers (LitServe, Ray Serve) call these two functions from their own batching code.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from lm.checkpoint import load_checkpoint
from lm.normalize import PTBNormalizer


class PlainTorchModel:
    """The checkpoint in float32 on the CPU, with the two batch functions the peers serve."""

    def __init__(self, model_dir: str | Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(model_dir)
        self.name = ckpt.name
        self.model = ckpt.model.eval()
        self.vocab = ckpt.vocab
        self.normalize = PTBNormalizer(ckpt.vocab)

    def _padded(self, texts: list[str], close: bool) -> tuple[Tensor, Tensor, list[list[str]]]:
        """(ids (B, T) right-padded with 0, lengths (B,), tokens): `<eos>` first, and last if `close`."""
        eos = self.vocab.eos_id
        tokens = [self.normalize(t) for t in texts]
        rows = [torch.tensor([eos, *self.vocab.encode(w), *([eos] if close else [])]) for w in tokens]
        lengths = torch.tensor([len(r) for r in rows])
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths, tokens

    @torch.inference_mode()
    def score(self, texts: list[str]) -> list[dict]:
        """Log-probability, token count and perplexity of each sentence."""
        ids, lengths, tokens = self._padded(texts, close=True)
        logits, _ = self.model(ids[:, :-1])  # (B, T-1, V)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        mask = torch.arange(ids.shape[1] - 1)[None, :] < (lengths - 1)[:, None]
        totals = (logp * mask).sum(-1).tolist()
        return [
            {"text": text, "tokens": [*words, "<eos>"], "logprob": lp, "num_tokens": n, "perplexity": math.exp(-lp / n)}
            for text, words, lp, n in zip(texts, tokens, totals, (lengths - 1).tolist(), strict=True)
        ]

    @torch.inference_mode()
    def next_word(self, prefixes: list[str], top_k: list[int]) -> list[dict]:
        """The `top_k[i]` most probable next words after prefix i."""
        ids, lengths, tokens = self._padded(prefixes, close=False)
        features, _ = self.model.features(ids)  # (B, T, H)
        last = features[torch.arange(len(prefixes)), lengths - 1]  # (B, H): after each prefix's own last token
        logp = torch.log_softmax(self.model.decoder(last), dim=-1)  # (B, V)
        values, indices = logp.topk(max(top_k), dim=-1)
        out = []
        for prefix, words, k, v, i in zip(prefixes, tokens, top_k, values.tolist(), indices.tolist(), strict=True):
            pairs = zip(v[:k], i[:k], strict=True)
            top = [{"word": self.vocab.itos[j], "prob": math.exp(x), "logprob": x} for x, j in pairs]
            out.append({"prefix": prefix, "tokens": words, "top_k": top})
        return out
