"""Reading a large corpus: peak memory and time of the trainer's two streaming passes over a generated file,
into memory and into the memory-mapped data cache.

    python -m benchmarks.corpus                  # 20 million tokens, writes its section of docs/benchmarks.md
    python -m benchmarks.corpus --tokens 200000 --no-write

A Zipfian text (s = 1.1 over 200,000 word types, sentences of 5 to 40 words, fixed seed) is written to a
temporary file; then, in a fresh process each so that nothing else is in memory, `count_words` (pass 1: a
Counter of types) with `Vocabulary.from_counts`, and `encode_file` (pass 2: the int32 stream) run over it;
then both passes into a data cache (trainer.cache, `--data-cache`), and a walk over every training window of
the cache's memory-mapped stream. Each child reports its peak resident set (`ru_maxrss`) and wall time. The
Python interpreter with torch imported is the baseline: what the passes add is the difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import table, write_section, write_zipf_text

WORD_TYPES = 200_000
ZIPF_S = 1.1

CHILD = r"""
import json, re, resource, sys, time
from pathlib import Path
import torch
from lm.tokenizers import WhitespaceTokenizer
from lm.vocab import Vocabulary
from trainer.cache import cached_corpus
from trainer.data import DataFiles, batchify, count_words, encode_file, windows
what, path, vocab_size, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = {}
if what in ("count", "encode"):
    counts = count_words(path)
    vocab = Vocabulary.from_counts(counts, max_size=vocab_size)
    result["types"] = len(counts)
    result["count_s"] = time.perf_counter() - t0
    if what == "encode":
        del counts
        t1 = time.perf_counter()
        enc = encode_file(path, vocab)
        result["encode_s"] = time.perf_counter() - t1
        result["tokens"] = enc.ids.numel()
        result["bytes"] = enc.ids.numel() * enc.ids.element_size()
        result["oov"] = enc.oov
elif what in ("cache", "walk"):  # build the data cache / map it and walk every training window
    files = DataFiles(Path(path), Path(path))
    corpus = cached_corpus(cache, files, WhitespaceTokenizer(), vocab_size, log=lambda _: None)
    result["cache_s"] = time.perf_counter() - t0
    if what == "walk":
        t1 = time.perf_counter()
        for x, y in windows(batchify(corpus.train, 20), 35):
            x.long(), y.long()  # what a training step reads of the stream
        result["walk_s"] = time.perf_counter() - t1
        status = Path("/proc/self/status").read_text()
        for field in ("RssAnon", "RssFile"):
            result[field] = int(re.search(field + r":\s+(\d+)", status).group(1)) / 1024
result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["base_mib"] = base / 1024
print(json.dumps(result))
"""


def measure(what: str, path: Path, vocab_size: int) -> dict:
    cache = path.parent / "cache"  # the `cache` child writes it, the `walk` child maps it
    argv = [sys.executable, "-c", CHILD, what, str(path), str(vocab_size), str(cache)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=20_000_000, help="words in the generated file")
    p.add_argument("--vocab-size", type=int, default=50_000)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zipf.txt"
        t0 = time.perf_counter()
        words = write_zipf_text(path, args.tokens, seed=0, s=ZIPF_S, types=WORD_TYPES, lengths=(5, 40))
        size_mb = path.stat().st_size / 1e6
        print(f"generated {words:,} words ({size_mb:,.0f} MB) in {time.perf_counter() - t0:.0f} s")
        base = measure("baseline", path, args.vocab_size)
        count = measure("count", path, args.vocab_size)
        enc = measure("encode", path, args.vocab_size)
        cache = measure("cache", path, args.vocab_size)
        walk = measure("walk", path, args.vocab_size)

    stream_mib = enc["bytes"] / 2**20
    rows = [
        ["Python + torch, nothing read", f"{base['peak_mib']:,.0f}", "–", "–"],
        ["pass 1: count_words + Vocabulary.from_counts", f"{count['peak_mib']:,.0f}", f"{count['count_s']:.1f}", "–"],
        [
            "passes 1 and 2: + encode_file (int32 stream)",
            f"{enc['peak_mib']:,.0f}",
            f"{enc['count_s']:.1f}",
            f"{enc['encode_s']:.1f}",
        ],
        [
            "passes 1 and 2 into `--data-cache` files (trainer.cache)",
            f"{cache['peak_mib']:,.0f}",
            f"{cache['cache_s']:.1f} (both)",
            "",
        ],
        [
            f"the cache mapped, every window read (at the end: RssAnon {walk['RssAnon']:,.0f}, RssFile "
            f"{walk['RssFile']:,.0f})",
            f"{walk['peak_mib']:,.0f}",
            "–",
            f"{walk['walk_s']:.1f} (walk)",
        ],
    ]
    body = table(["process", "peak RSS (MiB)", "pass 1 (s)", "pass 2 (s)"], rows)
    per_100m = (enc["peak_mib"] - base["peak_mib"]) * 1e8 / enc["tokens"] / 1024
    body = (
        f"A generated Zipfian file (s = {ZIPF_S}, {WORD_TYPES:,} possible types, {count['types']:,} seen) of "
        f"{enc['tokens']:,} tokens with `<eos>` ({size_mb:,.0f} MB), vocabulary of the {args.vocab_size:,} most "
        f"frequent ({enc['oov']:,} tokens became `<unk>`). Each row is a fresh process; peak RSS is "
        f"`ru_maxrss`.\n\n{body}\n\n"
        f"The stream itself is {stream_mib:,.0f} MiB (4 bytes a token). What reading adds to the interpreter, "
        f"{enc['peak_mib'] - base['peak_mib']:,.0f} MiB here, scales to about {per_100m:.1f} GiB for 100 million "
        "tokens (the stream grows linearly; the Counter with the number of types). With `--data-cache` the "
        "encoder writes each 1 MiB chunk to the split's file as it goes: what the two passes add "
        f"({cache['peak_mib'] - base['peak_mib']:,.0f} MiB here) is pass 1's Counter and a chunk, not the stream. "
        "Training maps the file: the pages a walk over every window touched count in RSS as RssFile (with the "
        "shared libraries), page cache the kernel drops under pressure, while RssAnon (the process's own memory) "
        "stays the interpreter's. Times are wall seconds on a 2-core machine shared with other work: indicative "
        "only."
    )
    print(body)
    if not args.no_write:
        write_section("corpus", "Reading a corpus: memory and time", body)


if __name__ == "__main__":
    main()
