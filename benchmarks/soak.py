"""Soak benchmark: the server as a user starts it, its capacity measured, then a long steady load at a fraction
of that capacity; prints requests served, errors, latency and the server's resident memory at start and end.

    python benchmarks/soak.py --minutes 10 --fraction 0.8

Load: POST /score with one PTB test sentence per request, drawn at random, from one asyncio client process on
127.0.0.1 (sharing the machine's cores with the server). Capacity is the closed-loop rate of `--concurrency`
clients over `--capacity-seconds`; the soak is open-loop at `fraction` x capacity for `--minutes`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def sentences(data_dir: Path) -> list[str]:
    lines = [line.strip() for line in (data_dir / "ptb.test.txt").read_text().splitlines() if line.strip()]
    return lines


def start_server(model: str | None, threads: int | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, **({"LMSERVE_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")


async def closed_loop(base: str, texts: list[str], concurrency: int, seconds: float) -> float:
    """Requests/s that `concurrency` clients get, each sending its next request when the last is answered."""
    done = 0
    stop = time.perf_counter() + seconds
    rng = random.Random(1)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await c.post("/score", json={"text": rng.choice(texts)})
                r.raise_for_status()
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


async def open_loop(base: str, texts: list[str], rate: float, seconds: float, pid: int) -> dict:
    """Send at `rate` requests/s for `seconds`, whatever the answers; count what comes back."""
    rng = random.Random(2)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    in_flight: set[asyncio.Task] = set()
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=256)) as c:

        async def one(text: str) -> None:
            t = time.perf_counter()
            try:
                r = await c.post("/score", json={"text": text})
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    return
                latencies.append(time.perf_counter() - t)
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

        t0 = time.perf_counter()
        sent = 0
        next_sample = t0
        while (now := time.perf_counter()) - t0 < seconds:
            if now >= next_sample:
                rss.append((now - t0, rss_mib(pid)))
                next_sample += 10
            due = int((now - t0) * rate) - sent
            for _ in range(due):
                task = asyncio.create_task(one(rng.choice(texts)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - t0
    rss.append((elapsed, rss_mib(pid)))
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    return {
        "sent": sent,
        "served": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 1),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * q[49], 2),
        "p99_ms": round(1000 * q[98], 2),
        "rss_mib_start": round(rss[0][1], 1),
        "rss_mib_end": round(rss[-1][1], 1),
        "rss_mib_max": round(max(r for _, r in rss), 1),
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
    args = p.parse_args()
    texts = sentences(args.data_dir)
    proc, base = start_server(args.model, args.threads)
    try:
        capacity = asyncio.run(closed_loop(base, texts, args.concurrency, args.capacity_seconds))
        print(
            f"capacity: {capacity:.1f} requests/s ({args.concurrency} closed-loop clients, {args.capacity_seconds:g} s)"
        )
        rate = args.fraction * capacity
        print(f"soak: {rate:.1f} requests/s for {args.minutes:g} min ...", flush=True)
        result = asyncio.run(open_loop(base, texts, rate, 60 * args.minutes, proc.pid))
        result = {"capacity_rps": round(capacity, 1), "target_rps": round(rate, 1), **result}
        growth = 100 * (result["rss_mib_end"] - result["rss_mib_start"]) / result["rss_mib_start"]
        result["rss_growth_pct"] = round(growth, 2)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        proc.terminate()
        code = proc.wait(60)
        print(f"server exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
