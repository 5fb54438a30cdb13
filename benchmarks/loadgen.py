"""A closed-loop HTTP/1.1 load generator in Python, for machines without `wrk` (the GPU machines have none).

    python -m benchmarks.loadgen http://127.0.0.1:8000/score --bodies bodies.jsonl -c 64 -d 5

`c` connections, each sending one request and waiting for its answer before the next (keep-alive), spread over
several processes so that the client is not the bottleneck; every request is a random line of the bodies file
(POST, JSON) or, without one, a GET. The result has the fields of `benchmarks.http_load`'s wrk script:
requests answered (any status), duration, latency quantiles, and errors by kind (connect, read, write, non-2xx
status, timeout; `busy` counts the 429 answers among the non-2xx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_S = 10.0


def _request(host: str, path: str, body: str | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    data = body.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length framed, as the service answers); returns its status code."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _client(url: str, bodies: list[str], deadline: float, seed: int, out: dict) -> None:
    """One connection's loop until `deadline`: the latency of every answer and the errors, into `out`."""
    parts = urlsplit(url)
    rng = random.Random(seed)
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), TIMEOUT_S)
            except (OSError, TimeoutError):
                out["errors"]["connect"] += 1
                await asyncio.sleep(0.01)
                continue
        request = _request(parts.netloc, parts.path or "/", rng.choice(bodies) if bodies else None)
        t0 = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            out["errors"]["write"] += 1
            writer = None
            continue
        try:
            status = await asyncio.wait_for(_read_response(reader), TIMEOUT_S)
        except TimeoutError:
            out["errors"]["timeout"] += 1
            writer.close()
            writer = None
            continue
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            out["errors"]["read"] += 1
            writer.close()
            writer = None
            continue
        out["latencies"].append(time.perf_counter() - t0)
        out["statuses"][status] += 1
    if writer is not None:
        writer.close()


def _process(url: str, bodies: list[str], connections: int, seconds: float, seed: int) -> dict:
    """Run `connections` clients in this process for `seconds`; returns the raw latencies, statuses and errors."""
    out: dict = {"latencies": [], "statuses": Counter(), "errors": Counter()}

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, bodies, deadline, seed * 100003 + i, out) for i in range(connections)))

    t0 = time.perf_counter()
    asyncio.run(main())
    out["duration"] = time.perf_counter() - t0
    return out


def _process_star(args: tuple) -> dict:
    return _process(*args)


def quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank; 0 for none."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def run(url: str, bodies: list[str], connections: int, seconds: float, processes: int | None = None) -> dict:
    """Closed-loop load on `url` with `connections` connections for `seconds`; wrk's result fields."""
    processes = max(1, min(connections, processes or max(1, (os.cpu_count() or 2) // 2), 8))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    jobs = [(url, bodies, n, seconds, i + 1) for i, n in enumerate(shares)]
    if processes == 1:
        parts = [_process(*jobs[0])]
    else:
        # fork: a worker starts in milliseconds (spawn would import the caller's modules, torch with them, per run)
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_process_star, jobs)
    latencies = sorted(x for p in parts for x in p["latencies"])
    statuses: Counter = sum((p["statuses"] for p in parts), Counter())
    errors: Counter = sum((p["errors"] for p in parts), Counter())
    non_2xx = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    return {
        "requests": len(latencies),
        "duration_us": int(max(p["duration"] for p in parts) * 1e6),
        "p50_us": int(quantile(latencies, 0.50) * 1e6),
        "p95_us": int(quantile(latencies, 0.95) * 1e6),
        "p99_us": int(quantile(latencies, 0.99) * 1e6),
        "connect": errors["connect"],
        "read": errors["read"],
        "write": errors["write"],
        "status": non_2xx,
        "timeout": errors["timeout"],
        "busy": statuses[429],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--bodies", type=Path, default=None, help="one JSON body per line (POST); none: GET")
    p.add_argument("-c", "--connections", type=int, default=8)
    p.add_argument("-d", "--seconds", type=float, default=5.0)
    p.add_argument("--processes", type=int, default=None, help="default: half the cores, at most 8")
    args = p.parse_args(argv)
    bodies = args.bodies.read_text(encoding="utf-8").splitlines() if args.bodies else []
    print(json.dumps(run(args.url, bodies, args.connections, args.seconds, args.processes)))


if __name__ == "__main__":
    main()
