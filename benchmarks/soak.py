"""Soak benchmark: the server as a user starts it, its capacity measured, then a long steady load at a fraction
of that capacity; prints requests served, errors, latency and the server's resident memory at start and end.

    python -m benchmarks.soak --minutes 10 --fraction 0.8

Load: `hey` (apt-get install hey) on 127.0.0.1, POST /score with one PTB test sentence (line `--sentence` of
ptb.test.txt), sharing the machine's cores with the server. Capacity is the closed-loop rate of
`--concurrency` clients over `--capacity-seconds`; the soak is rate-limited to `fraction` x capacity for
`--minutes`. The server's resident memory is read from /proc every 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from benchmarks.common import ptb_test_sentences, rss_mib, start_server, stop_server


def hey(base: str, body: Path, seconds: float, concurrency: int, rate: float | None = None) -> dict:
    """Run `hey` against POST /score and parse its summary (requests/s, latency quantiles, status codes)."""
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json"]
    if rate:
        cmd += ["-q", f"{rate / concurrency:.3f}"]  # hey's -q is per worker
    cmd += ["-D", str(body), base + "/score"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    codes = {m[0]: int(m[1]) for m in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = (
        re.findall(r"\[(\d+)\]\s+(.+)", out.split("Error distribution:")[1]) if "Error distribution:" in out else []
    )
    quantile = {q: float(v) for q, v in re.findall(r"\s(\d+)%% in ([\d.]+) secs".replace("%%", "%"), out)}
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "codes": codes,
        "errors": sum(int(n) for n, _ in errors),
        "p50_ms": round(1000 * quantile.get("50", float("nan")), 2),
        "p99_ms": round(1000 * quantile.get("99", float("nan")), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.8)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--capacity-seconds", type=float, default=30.0)
    p.add_argument("--model", default=None, help="checkpoint (default: the service's default)")
    p.add_argument("--threads", type=int, default=None, help="LMSERVE_THREADS for the server")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PTB_DATA_DIR", "../shared/data/ptb")))
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--sentence", type=int, default=4, help="which line of ptb.test.txt every request scores")
    args = p.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (apt-get install hey)")
    text = ptb_test_sentences(args.data_dir)[args.sentence]
    body = Path(tempfile.mkstemp(suffix=".json")[1])
    body.write_text(json.dumps({"text": text}))
    server_args = ["--model", args.model] if args.model else []
    proc, base = start_server(server_args, {"LMSERVE_THREADS": str(args.threads)} if args.threads else None)
    try:
        capacity = hey(base, body, args.capacity_seconds, args.concurrency)["rps"]
        rate = args.fraction * capacity
        print(
            f"capacity: {capacity:.1f} requests/s ({args.concurrency} closed-loop clients, {args.capacity_seconds:g} s)"
        )
        print(f"soak: {rate:.1f} requests/s for {args.minutes:g} min, sentence: {text!r}", flush=True)
        samples: list[float] = [rss_mib(proc.pid)]  # one every 10 s; [6] is after the first minute
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(hey(base, body, 60 * args.minutes, args.concurrency, rate))
        )
        runner.start()
        while runner.is_alive():
            runner.join(10)
            samples.append(rss_mib(proc.pid))
        served = result["codes"].get("200", 0)
        figures = {
            "capacity_rps": round(capacity, 1),
            "target_rps": round(rate, 1),
            "minutes": args.minutes,
            "achieved_rps": result["rps"],
            "served_200": served,
            "other_codes": {k: v for k, v in result["codes"].items() if k != "200"},
            "errors": result["errors"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "rss_mib_start": round(samples[0], 1),
            "rss_mib_end": round(samples[-1], 1),
            "rss_mib_max": round(max(samples), 1),
            "rss_growth_pct": round(100 * (samples[-1] - samples[0]) / samples[0], 2),
            "rss_mib_after_1_min": round(samples[min(6, len(samples) - 1)], 1),
            "rss_growth_after_1_min_pct": round(
                100 * (samples[-1] - samples[min(6, len(samples) - 1)]) / samples[min(6, len(samples) - 1)], 2
            ),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        code = stop_server(proc)
        body.unlink()
        print(f"server exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
