"""The encoded corpus on disk, read back memory-mapped: training on corpora larger than memory.

    python -m trainer train --config small --train big.txt.gz --valid valid.txt --vocab-size 100000 \\
        --data-cache data/big.cache --out models/big

The cache directory holds one encoded corpus:

    train.int32, valid.int32[, test.int32]   each split's id stream, raw int32 in the machine's byte order
    vocab.txt                                the vocabulary the ids index
    meta.json                                what they were encoded from (the key), written last

Each split is encoded in one streaming pass straight into its file (trainer.data.encode_stream hands on
chunks of 1 MiB), so the stream is never in memory; training maps the files (numpy.memmap, copy-on-write,
nothing read until touched) and batchify / shard / windows are views of the mapping: a window reads only its
own slice. The key is every input file's sha256, the tokenizer's spec and the vocabulary options; a cache
whose key differs (a changed file, another tokenizer or vocabulary size) is encoded again, never reused, and
an unchanged one is reused without reading the text (only hashing it).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lm.checkpoint import sha256_file
from lm.tokenizers import Tokenizer
from lm.vocab import Vocabulary, VocabularyError
from trainer.data import SPLITS, Corpus, DataFiles, build_vocabulary, closed_vocabulary, encode_stream
from trainer.errors import TrainerError

CACHE_FORMAT = 1
META_FILE = "meta.json"
VOCAB_FILE = "vocab.txt"


def cache_key(
    files: DataFiles,
    tokenizer: Tokenizer,
    vocab_size: int | None,
    min_count: int,
    sha256: dict[str, str] | None = None,
) -> dict:
    """What an encoded corpus depends on: each split's content (sha256, by split: `files.sha256()` unless
    given), the tokenizer, the vocabulary options, and the cache's own format and byte order."""
    return {
        "format": CACHE_FORMAT,
        "byteorder": sys.byteorder,
        "files": sha256 or files.sha256(),
        "tokenizer": tokenizer.spec(),
        "vocab_size": vocab_size,
        "min_count": min_count,
    }


def map_stream(path: Path, tokens: int) -> Tensor:
    """A read-only-in-effect int32 view of a split's file: copy-on-write pages, read when touched."""
    try:
        array = np.memmap(path, dtype=np.int32, mode="c", shape=(tokens,))
    except (OSError, ValueError) as e:
        raise TrainerError(f"{path}: cannot map the encoded stream ({e}); delete the cache to rebuild it") from None
    return torch.from_numpy(array)


def open_cache(cache_dir: Path, key: dict) -> tuple[Corpus | None, str]:
    """The cached corpus if `cache_dir` holds one encoded under `key`, else (None, why not)."""
    try:
        meta = json.loads((cache_dir / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError) as e:
        return None, f"unreadable {META_FILE} ({e})"
    if meta.get("key") != key:
        old = meta.get("key") or {}
        changed = [k for k in key if old.get(k) != key[k]]
        if "files" in changed:
            files = old.get("files") or {}
            changed.remove("files")
            changed = [f"{s} file" for s in key["files"] if files.get(s) != key["files"][s]] + changed
        return None, f"encoded from other inputs ({', '.join(changed)} changed)"
    try:  # the file's digest, as a checkpoint's vocabulary is checked (lm.checkpoint)
        if sha256_file(cache_dir / VOCAB_FILE) != meta.get("vocab_sha256"):
            return None, f"{VOCAB_FILE} is not the one the streams were encoded with"
        vocab = Vocabulary.load(cache_dir / VOCAB_FILE)
    except (OSError, VocabularyError) as e:
        return None, str(e)
    if not isinstance(meta.get("tokens"), dict) or not isinstance(meta.get("oov"), dict):
        return None, f"{META_FILE} is not a data cache's"
    streams = {}
    for split, tokens in meta["tokens"].items():
        path = cache_dir / f"{split}.int32"
        if not path.is_file() or path.stat().st_size != 4 * tokens:
            return None, f"{path.name} is missing or truncated"
        streams[split] = map_stream(path, tokens)
    return Corpus(vocab, streams["train"], streams["valid"], streams.get("test"), oov=meta["oov"]), "reused"


def _is_cache_file(path: Path) -> bool:
    return path.name in (META_FILE, VOCAB_FILE) or (path.suffix == ".int32" and path.stem in SPLITS)


def _refuse_other_files(cache_dir: Path) -> None:
    """A cache is replaced whole: refuse a directory that holds anything but a cache's files (a data
    directory given by mistake must not be deleted)."""
    if not cache_dir.exists():
        return
    if not cache_dir.is_dir():
        raise TrainerError(f"--data-cache {cache_dir}: not a directory")
    others = [p.name for p in cache_dir.iterdir() if not (p.is_file() and _is_cache_file(p))]
    if others:
        raise TrainerError(
            f"--data-cache {cache_dir}: holds other files ({', '.join(sorted(others)[:3])}), so it is not a data "
            "cache; give a new or empty directory"
        )


def build_cache(
    cache_dir: Path, files: DataFiles, tokenizer: Tokenizer, vocab_size: int | None, min_count: int, key: dict
) -> Corpus:
    """Count, build the vocabulary, encode each split straight into its file, then map them: the stream is
    never held in memory. Written into a temporary directory renamed at the end, so a cache is whole or absent."""
    _refuse_other_files(cache_dir)
    tmp = cache_dir.with_name(cache_dir.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise TrainerError(f"{cache_dir}: cannot write the data cache ({e})") from None
    vocab = build_vocabulary(files.train, tokenizer, vocab_size, min_count)
    closed = closed_vocabulary(vocab_size, min_count)
    tokens, oov = {}, {}
    for split, path in files.items():
        with (tmp / f"{split}.int32").open("wb") as f:
            tokens[split], oov[split] = encode_stream(path, vocab, f.write, tokenizer, closed and split != "train")
    vocab.save(tmp / VOCAB_FILE)
    meta = {"key": key, "vocab_sha256": sha256_file(tmp / VOCAB_FILE), "tokens": tokens, "oov": oov}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    shutil.rmtree(cache_dir, ignore_errors=True)
    tmp.rename(cache_dir)
    corpus, why = open_cache(cache_dir, key)
    if corpus is None:
        raise TrainerError(f"{cache_dir}: the data cache just written does not read back ({why})")
    return corpus


def cached_corpus(
    cache_dir: str | Path,
    files: DataFiles,
    tokenizer: Tokenizer,
    vocab_size: int | None = None,
    min_count: int = 1,
    sha256: dict[str, str] | None = None,
    build: bool = True,
    log: Callable[[str], object] = print,
) -> Corpus:
    """The corpus of `files` from `cache_dir`, memory-mapped: reused if encoded from the same inputs, else
    (with `build`) encoded again; without `build` (a rank waiting on rank 0's cache), an error."""
    cache_dir = Path(cache_dir)
    key = cache_key(files, tokenizer, vocab_size, min_count, sha256)
    corpus, why = open_cache(cache_dir, key)
    if corpus is not None:
        log(f"data cache {cache_dir}: reused")
        return corpus
    if not build:
        raise TrainerError(f"{cache_dir}: no usable data cache ({why})")
    log(f"data cache {cache_dir}: {why}; encoding")
    return build_cache(cache_dir, files, tokenizer, vocab_size, min_count, key)
