"""The data cache: each split encoded into an int32 file and trained from a memory-mapped view. The same ids,
windows and weights as the in-memory stream; reused only while its inputs are unchanged; and encoding into
it never holds the stream in memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lm.tokenizers import WhitespaceTokenizer, WordsTokenizer
from trainer.cache import cached_corpus
from trainer.cli import main
from trainer.data import DataFiles, batchify, load_corpus, shard, windows
from trainer.errors import TrainerError


def files_of(d: Path) -> DataFiles:
    return DataFiles.from_dir(d)


def test_cached_streams_are_the_in_memory_ones(fake_ptb_dir: Path, tmp_path: Path) -> None:
    files, tok = files_of(fake_ptb_dir), WhitespaceTokenizer()
    memory = load_corpus(files, tokenizer=tok, vocab_size=8)
    mapped = cached_corpus(tmp_path / "cache", files, tok, vocab_size=8, log=lambda _: None)
    assert mapped.vocab == memory.vocab
    assert mapped.oov == memory.oov and mapped.oov["train"] > 0
    assert mapped.unk_tokens() == memory.unk_tokens()
    for split in ("train", "valid", "test"):
        a, b = getattr(memory, split), getattr(mapped, split)
        assert b.dtype == torch.int32 and torch.equal(a, b), split
        on_disk = np.fromfile(tmp_path / "cache" / f"{split}.int32", dtype=np.int32)
        assert on_disk.tolist() == a.tolist(), split  # the file is the stream, nothing else

    # batchify, shard and windows are views of the mapping: nothing copied until a window is used.
    batched = batchify(mapped.train, 3)
    assert batched.data_ptr() == mapped.train.data_ptr()
    assert shard(mapped.train, 2, 1, 2).untyped_storage().data_ptr() == mapped.train.untyped_storage().data_ptr()
    pairs = zip(windows(batched, 5), windows(batchify(memory.train, 3), 5), strict=True)
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in pairs)


def test_cache_is_reused_only_while_its_inputs_are_unchanged(
    fake_ptb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, files = tmp_path / "cache", files_of(fake_ptb_dir)
    messages: list[str] = []

    def load(tokenizer=None, vocab_size: int | None = 8):
        return cached_corpus(cache, files, tokenizer or WhitespaceTokenizer(), vocab_size, log=messages.append)

    first = load()
    assert messages[-1].endswith("no cache yet; encoding")
    import trainer.cache

    with monkeypatch.context() as mp:  # reuse reads no text: neither pass runs
        mp.setattr(trainer.cache, "build_vocabulary", lambda *a, **k: pytest.fail("the corpus was read again"))
        again = load()
    assert messages[-1].endswith(": reused") and torch.equal(again.train, first.train)

    load(vocab_size=6)
    assert "(vocab_size changed)" in messages[-1]
    assert len(load(vocab_size=6).vocab) == 6 and messages[-1].endswith(": reused")
    load(WordsTokenizer(lowercase=True), vocab_size=6)
    assert "(tokenizer changed)" in messages[-1]
    load()  # back to the first inputs
    with (fake_ptb_dir / "ptb.valid.txt").open("a", encoding="utf-8") as f:
        f.write("a b c\n")
    changed = cached_corpus(cache, files, WhitespaceTokenizer(), 8, log=messages.append)
    assert "(valid file changed)" in messages[-1]
    assert changed.valid.numel() == first.valid.numel() + 4

    (cache / "train.int32").write_bytes(b"\0\0\0\0")  # a damaged cache is rebuilt, never trusted
    cached_corpus(cache, files, WhitespaceTokenizer(), 8, log=messages.append)
    assert "train.int32 is missing or truncated" in messages[-1]
    itos = (cache / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (cache / "vocab.txt").write_text("\n".join([itos[1], itos[0], *itos[2:]]) + "\n", encoding="utf-8")
    rebuilt = cached_corpus(cache, files, WhitespaceTokenizer(), 8, log=messages.append)
    assert "vocab.txt is not the one the streams were encoded with" in messages[-1]
    assert rebuilt.vocab == first.vocab and torch.equal(rebuilt.train, first.train)
    with pytest.raises(TrainerError, match="no usable data cache"):
        (cache / "meta.json").unlink()
        cached_corpus(cache, files, WhitespaceTokenizer(), 8, build=False, log=messages.append)


def test_a_directory_with_other_files_is_never_taken_for_a_cache(fake_ptb_dir: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in fake_ptb_dir.iterdir())
    with pytest.raises(TrainerError, match=r"holds other files \(ptb\.test\.txt.* not a data cache"):
        cached_corpus(fake_ptb_dir, files_of(fake_ptb_dir), WhitespaceTokenizer(), 8, log=lambda _: None)
    assert sorted(p.name for p in fake_ptb_dir.iterdir()) == before  # nothing deleted


def test_training_from_the_cache_gives_the_in_memory_weights(fake_ptb_dir: Path, tmp_path: Path) -> None:
    common = ["train", "--config", "test", "--data-dir", str(fake_ptb_dir), "--max-epochs", "2", "--no-progress"]
    assert main([*common, "--vocab-size", "8", "--out", str(tmp_path / "memory")]) == 0
    cache = tmp_path / "cache"
    for run in ("mapped", "mapped-again"):  # the second run reuses the cache
        assert main([*common, "--vocab-size", "8", "--data-cache", str(cache), "--out", str(tmp_path / run)]) == 0
        a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("memory", run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        logs = [(tmp_path / d / "train_log.jsonl").read_text(encoding="utf-8").splitlines() for d in ("memory", run)]
        assert [json.loads(x)["train_ppl"] for x in logs[0]] == [json.loads(x)["train_ppl"] for x in logs[1]]
        meta = [json.loads((tmp_path / d / "config.json").read_text(encoding="utf-8")) for d in ("memory", run)]
        assert meta[0]["training"]["unk_tokens"] == meta[1]["training"]["unk_tokens"]
        assert meta[0]["metrics"]["valid_ppl"] == meta[1]["metrics"]["valid_ppl"]


ENCODE = r"""
import re, sys, tempfile
from pathlib import Path
from lm.tokenizers import WhitespaceTokenizer
from trainer.cache import cached_corpus
from trainer.data import DataFiles, build_vocabulary, encode_file
def kib(field):
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
files = DataFiles(Path(sys.argv[2]), Path(sys.argv[2]))
vocab = build_vocabulary(files.train)  # the counting pass, and every import, before the baseline
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := RSS now
base = kib("VmRSS")
if sys.argv[1] == "memory":
    ids = encode_file(files.train, vocab).ids
else:
    cached_corpus(Path(tempfile.mkdtemp()) / "cache", files, WhitespaceTokenizer(), log=lambda _: None)
print((kib("VmHWM") - base) * 1024)
"""


def test_encoding_into_the_cache_does_not_hold_the_stream(tmp_path: Path) -> None:
    text = tmp_path / "big.txt"
    line = " ".join(f"w{i}" for i in range(20)) + "\n"
    text.write_text(line * 150_000, encoding="utf-8")  # 3.15 million tokens: a 12.6 MB stream
    stream_bytes = 4 * 21 * 150_000

    def added(how: str) -> int:
        argv = [sys.executable, "-c", ENCODE, how, str(text)]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return int(run.stdout.split()[-1])

    assert added("memory") >= stream_bytes  # the in-memory stream is all resident (the check can fail)
    assert added("cache") < stream_bytes / 3  # the cache's encoder holds a chunk or two, not the stream
