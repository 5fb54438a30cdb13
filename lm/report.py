"""A text file's per-sentence scores added up, and written as JSON lines or as SRILM's `ngram -ppl` report.

One tally serves the local scorer (`trainer eval --text`) and the HTTP client (`python -m service.client`), so
that the two print the same numbers in the same shapes. SRILM's report, for a word-level model that scores
out-of-vocabulary words as `<unk>` (they count as predictions here, unlike in SRILM without `-unk`):

    file F: N sentences, M words, K OOVs
    0 zeroprobs, logprob= X ppl= Y ppl1= Z

X is the total log10 probability, Y = 10^(-X / (M + N)) (every word and each sentence end predicted) and
Z = 10^(-X / M) (the sentence ends' probabilities counted, not their number), as SRILM defines them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lm.scoring import LN10, perplexity


@dataclass
class PerplexityTally:
    """Running totals over the sentences of one file; `add` returns the sentence's own row."""

    sentences: int = 0
    words: int = 0  # tokens before the final <eos>
    oov: int = 0
    num_tokens: int = 0  # predictions: words plus the sentence ends
    logprob: float = 0.0  # natural log

    def add(self, text: str, num_tokens: int, oov: list[str], logprob: float, eos: bool = True) -> dict:
        words = num_tokens - 1 if eos else num_tokens
        self.sentences += 1
        self.words += words
        self.oov += len(oov)
        self.num_tokens += num_tokens
        self.logprob += logprob
        return sentence_row(text, num_tokens, words, oov, logprob)

    def summary(self, file: str) -> dict:
        return {
            "file": file,
            "sentences": self.sentences,
            "words": self.words,
            "oov": self.oov,
            "num_tokens": self.num_tokens,
            "logprob": self.logprob,
            "log10prob": self.logprob / LN10,
            "perplexity": perplexity(self.logprob, self.num_tokens) if self.num_tokens else math.nan,
        }


def sentence_row(text: str, num_tokens: int, words: int, oov: list[str], logprob: float) -> dict:
    """One sentence's JSON line."""
    return {
        "text": text,
        "num_tokens": num_tokens,
        "words": words,
        "num_oov": len(oov),
        "oov": oov,
        "logprob": logprob,
        "log10prob": logprob / LN10,
        "perplexity": perplexity(logprob, num_tokens),
    }


def jsonl_summary(summary: dict) -> str:
    return json.dumps({"summary": summary})


def srilm_block(header: str, sentences: int, words: int, oov: int, log10prob: float) -> str:
    """SRILM's two-line block: counts, then `0 zeroprobs, logprob= X ppl= Y ppl1= Z` (see the module docstring)."""
    ppl = 10 ** (-log10prob / (words + sentences)) if words + sentences else math.nan
    ppl1 = 10 ** (-log10prob / words) if words else math.nan
    return (
        f"{header}{sentences} sentences, {words} words, {oov} OOVs\n"
        f"0 zeroprobs, logprob= {log10prob:.6g} ppl= {ppl:.6g} ppl1= {ppl1:.6g}"
    )


def srilm_sentence(row: dict) -> str:
    """`ngram -ppl -debug 1`'s lines for one sentence: the text, its block, a blank line."""
    block = srilm_block("", 1, row["words"], row["num_oov"], row["log10prob"])
    return f"{row['text']}\n{block}\n"


def srilm_summary(summary: dict) -> str:
    """The file's block, as `ngram -ppl` ends its report."""
    s = summary
    return srilm_block(f"file {s['file']}: ", s["sentences"], s["words"], s["oov"], s["log10prob"])
