"""Steady /score and /next-word traffic until stopped, for checking that scaling replicas loses no request.

    python3 docker/steady_load.py http://127.0.0.1:18081 --clients 4 --out /tmp/load.json &
    ... scale up and down ...
    kill -INT $!        # it finishes the requests in flight, then writes its counts

Each client sends one request after another (alternating /score and /next-word) and counts the answers by
status; a connection error or timeout counts as "error". Standard library only: test-stack.sh runs it with the
system Python. The counts go to --out as JSON: {"answers": {"200": n, ...}, "failed": n, "first_failures": [...]}.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import urllib.error
import urllib.request
from collections import Counter

BODIES = [
    ("/score", {"text": "the stock market rose sharply on friday"}),
    ("/next-word", {"prefix": "the company said", "top_k": 3}),
]


def client(base: str, n: int, stop: threading.Event, counts: Counter, failures: list[str], lock: threading.Lock):
    """One closed-loop client: a request, its answer, the next request."""
    i = n
    while not stop.is_set():
        path, body = BODIES[i % len(BODIES)]
        i += 1
        req = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
                status = str(resp.status)
        except urllib.error.HTTPError as e:
            status = str(e.code)
            what = f"{path}: {e.code} {e.read()[:200]!r}"
        except OSError as e:
            status, what = "error", f"{path}: {e}"
        with lock:
            counts[status] += 1
            if status != "200" and len(failures) < 20:
                failures.append(what)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base_url")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--out", required=True, help="where the counts are written (JSON) once stopped")
    args = p.parse_args()
    stop, lock = threading.Event(), threading.Lock()
    counts: Counter = Counter()
    failures: list[str] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = [
        threading.Thread(target=client, args=(args.base_url.rstrip("/"), n, stop, counts, failures, lock))
        for n in range(args.clients)
    ]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        pass
    for t in threads:
        t.join()
    failed = sum(n for status, n in counts.items() if status != "200")
    result = {"answers": dict(counts), "failed": failed, "first_failures": failures}
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
