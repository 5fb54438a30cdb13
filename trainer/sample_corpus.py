"""A small, real, non-PTB corpus that every Python carries: the English text of Python's own documentation.

    python -m trainer sample-corpus --out data/pydoc

`pydoc_data.topics` (the standard library; the text of `help("assert")`, `help("if")`, ...: the Python
Language Reference's topics, under the PSF licence) holds 79 topics, about 65,000 words. Their paragraphs
are cut into sentences, one a line, and dealt into train / valid / test (8 / 1 / 1 of every 10 sentences, in
order). Raw text, with its punctuation, capitals and code: what the `words` tokenizer is for. The text
changes a little between Python releases (the trainer records each file's sha256 in config.json).
"""

from __future__ import annotations

import re
from pathlib import Path

from trainer.errors import TrainerError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_RULE = re.compile(r"^[\W_]+$")  # a line of only punctuation: the '*****' under each topic's title


def pydoc_sentences() -> list[str]:
    """Every sentence of pydoc_data.topics, topics in name order, whitespace collapsed."""
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = [line.strip() for line in paragraph.splitlines() if line.strip() and not _RULE.match(line.strip())]
            text = " ".join(" ".join(lines).split())
            sentences.extend(s for s in _SENTENCE_END.split(text) if s)
    return sentences


def write_sample_corpus(out: str | Path) -> dict[str, Path]:
    """Write train.txt, valid.txt and test.txt into `out`; returns their paths by split."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainerError(f"{out}: cannot create ({e})") from None
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, sentence in enumerate(pydoc_sentences()):
        splits["valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(sentence)
    paths = {}
    for split, lines in splits.items():
        paths[split] = out / f"{split}.txt"
        paths[split].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths
