"""How `/score`'s cost grows: time against sentence length, time against batch composition, memory against length.

    python -m benchmarks.scaling                      # models/ptb-cpu, lengths 1 .. 4,096 tokens
    python -m benchmarks.scaling --lengths 1 64 --repeats 2 --no-write

The server is started as a user starts it (`python -m service`, one worker, float32), with the per-sentence
character limit raised so that a 4,096-token sentence fits. Sentences are PTB test text run together and cut
to n words (already normalised: n words are n tokens, n + 1 predictions with the closing `<eos>`). One client,
one request at a time: the figure is the median wall time of `--repeats` requests, after one untimed.

Memory: the server's peak resident set (VmHWM) after the requests of each length, lengths in increasing order,
so each row's growth over the first is what that length needed at most.

Composition: one request of 32 sentences, all short, all long, or half and half; a padded batch would cost
the mixed request what the all-long one costs, a batch whose rows leave as they end about the mean of the two.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    DEFAULT_DATA_DIR,
    REPORT,
    median,
    ptb_test_sentences,
    rss_mib,
    start_server,
    stop_server,
    table,
    write_section,
)

PLOT = REPORT.parent / "score-scaling.png"
LENGTHS = [1, 4, 16, 64, 256, 1024, 4096]


def timed_score(client: httpx.Client, body: dict, repeats: int) -> float:
    """Median milliseconds of POST /score with `body`, after one untimed request."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        r = client.post("/score", json=body)
        elapsed = time.perf_counter() - t0
        r.raise_for_status()
        if i:
            times.append(elapsed * 1000)
    return median(times)


def plot(length_rows: list[list[str]], path: Path = PLOT) -> None:
    """Time per request and peak memory against sentence length (log-log), with a line through the origin
    and the longest point for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [int(r[0]) for r in length_rows]
    ms = [float(r[1]) for r in length_rows]
    growth = [float(r[4]) for r in length_rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot(n, ms, marker="o", label="/score, one sentence")
    a.plot(n, [ms[-1] * x / n[-1] for x in n], ls="--", color="gray", label="linear (through the longest)")
    a.set(xscale="log", yscale="log", xlabel="sentence length (tokens)", ylabel="ms per request")
    b.plot(n, growth, marker="o", color="C1")
    b.set(xscale="log", xlabel="sentence length (tokens)", ylabel="peak RSS growth (MiB)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=LENGTHS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--short", type=int, default=8, help="tokens of a short sentence (composition)")
    p.add_argument("--long", type=int, default=512, help="tokens of a long sentence (composition)")
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    words = " ".join(ptb_test_sentences(args.data_dir)).split()
    longest = max([*args.lengths, args.long])
    if longest > len(words):
        raise SystemExit(f"the test set has {len(words)} words, fewer than {longest}")

    def text(n: int, offset: int = 0) -> str:
        return " ".join(words[offset : offset + n])

    # A long sentence on a busy machine may take longer than the default 30 s timeout.
    env = {
        "LMSERVE_MAX_CHARS": str(20 * longest),
        "LMSERVE_MAX_TOKENS": str(longest),
        "LMSERVE_REQUEST_TIMEOUT_S": "600",
    }
    proc, base = start_server(["--model", args.model] if args.model else [], env)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            base_rss = rss_mib(proc.pid, "VmHWM")
            length_rows = []
            for n in sorted(args.lengths):
                ms = timed_score(client, {"text": text(n)}, args.repeats)
                rss = rss_mib(proc.pid, "VmHWM")
                row = [str(n), f"{ms:.1f}", f"{1000 * ms / (n + 1):.1f}", f"{rss:.0f}", f"{rss - base_rss:.0f}"]
                length_rows.append(row)
                print("  ".join(row), flush=True)
            compositions = {
                "all short": [args.short] * 32,
                "all long": [args.long] * 32,
                "mixed (16 + 16)": [args.short] * 16 + [args.long] * 16,
            }
            mix_rows = []
            for name, lengths in compositions.items():
                sentences = [text(n, 97 * i) for i, n in enumerate(lengths)]
                ms = timed_score(client, {"sentences": sentences}, args.repeats)
                tokens = sum(n + 1 for n in lengths)
                mix_rows.append([name, f"{tokens:,}", f"{ms:.1f}", f"{1000 * ms / tokens:.1f}"])
                print("  ".join(mix_rows[-1]), flush=True)
    finally:
        stop_server(proc)

    body = (
        f"One client, one request at a time, median of {args.repeats} after one untimed; float32, one worker. "
        f"Peak RSS before the first request: {base_rss:.0f} MiB.\n\n"
        + table(["tokens", "ms", "us per prediction", "peak RSS MiB", "growth MiB"], length_rows)
        + f"\n\nOne request of 32 sentences ({args.short} or {args.long} tokens each):\n\n"
        + table(["composition", "predictions", "ms", "us per prediction"], mix_rows)
    )
    print(body)
    if not args.no_write:
        write_section("scaling", "How /score's cost grows", body)
        plot(length_rows)


if __name__ == "__main__":
    main()
