"""Hostile soak: a real `python -m service` under hostile clients interleaved with normal traffic; prints, per
hostile case, the answers and their timing, and overall the server's resident memory before, at its peak and
after (the hostile traffic stopped and a settle), `/healthz` latency throughout, and the count of 5xx.

    python -m benchmarks.hostile                 # ~75 s; writes its table into docs/reliability.md
    python -m benchmarks.hostile --no-write      # only prints

The server runs with an API key, `LMSERVE_REQUEST_TIMEOUT_S=2` and `LMSERVE_BODY_TIMEOUT_S=2` (so that a heavy
request or a stall ends within the run), everything else at its default. Two clients send normal /score and
/next-word requests in a loop, one polls /healthz every 50 ms, and one goes round the hostile cases (each
case a function below: input, connection and body attacks) until `--seconds` have passed.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import httpx

from benchmarks.common import REPO, rss_mib, start_server, stop_server, table, write_section

KEY = "hostile-soak-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
RELIABILITY = REPO / "docs" / "reliability.md"
MIB = 1 << 20
TIMEOUT_S = "2"  # the server's LMSERVE_REQUEST_TIMEOUT_S: a heavy hostile request ends within the run


class Server:
    """Where the server listens, and raw-socket helpers for the attacks below httpx's reach."""

    def __init__(self, base: str) -> None:
        self.base = base
        host, port = base.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def post(self, path: str, body: object, headers: dict | None = None, timeout: float = 30) -> int:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with httpx.Client(timeout=timeout) as c:
            return c.post(self.base + path, content=content, headers={**JSON, **AUTH, **(headers or {})}).status_code


def answer_of(sock: socket.socket, timeout: float = 15) -> str:
    """The status the server answered on a raw connection, `closed` if it closed without one, `open` if it
    still holds the connection after `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n" in data:
                break
    except ConnectionResetError:
        pass
    except TimeoutError:
        return "open"
    finally:
        sock.close()
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


def stalled_uploads(s: Server, n: int, path: str, key: bool) -> list[str]:
    """`n` connections that announce a 4 MB - 1 body, send 64 KiB of it and stall; the answers."""
    socks = []
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {4 * MIB - 1}\r\n"
    head += f"authorization: Bearer {KEY}\r\n" if key else ""
    for _ in range(n):
        sock = s.connect()
        sock.sendall(head.encode() + b"\r\n" + b"[" * 65536)
        socks.append(sock)
    return [answer_of(sock) for sock in socks]


def huge_header(s: Server) -> list[str]:
    """40 MB of one header that never ends."""
    sock = s.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
    try:
        for _ in range(40):
            sock.sendall(b"a" * MIB)
    except (BrokenPipeError, ConnectionResetError):
        return ["closed"]
    return [answer_of(sock)]


def many_headers(s: Server) -> list[str]:
    sock = s.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(1000)) + b"\r\n")
    return [answer_of(sock)]


def slow_loris(s: Server, n: int) -> list[str]:
    """`n` connections that send part of a request head and stall."""
    socks = []
    for _ in range(n):
        sock = s.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: a")
        socks.append(sock)
    return [answer_of(sock) for sock in socks]


def silent(s: Server, n: int) -> list[str]:
    socks = [s.connect() for _ in range(n)]
    return [answer_of(sock) for sock in socks]


def hang_up_mid_upload(s: Server) -> list[str]:
    sock = s.connect()
    head = "POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n"
    sock.sendall((head + f"authorization: Bearer {KEY}\r\n\r\n").encode() + b'{"text": "the')
    time.sleep(0.1)
    sock.close()
    return ["hung up"]


def nested(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


HEAVY = "(" * 2000 + "the stock market " * 500 + ")" * 2000

# name -> what it sends (returns the answers, one per request). Each is a case of the issue or of its class.
CASES: dict[str, Callable[[Server], list[object]]] = {
    "`(` x 3,200 then `)` x 3,200 (/score)": lambda s: [s.post("/score", {"text": "(" * 3200 + ")" * 3200})],
    "`1` + `%` x 2,000 (/next-word prefix)": lambda s: [s.post("/next-word", {"prefix": "1" + "%" * 2000})],
    "lone surrogate in `sentences`": lambda s: [s.post("/score", b'{"sentences": ["a \\ud800 b"]}')],
    "lone surrogate in `candidates`": lambda s: [s.post("/next-word", b'{"prefix": "a", "candidates": ["\\ud800"]}')],
    "256 prefixes x 100 candidates x top_k 100": lambda s: [
        s.post("/next-word", {"prefixes": ["the"] * 256, "candidates": ["the"] * 100, "top_k": 100})
    ],
    "200 sentences of 12,500 pathological characters": lambda s: [s.post("/score", {"sentences": [HEAVY] * 200})],
    "2 sentences of 1,500 words (/score, within every limit)": lambda s: [
        s.post("/score", {"sentences": ["the stock market " * 500] * 2})
    ],
    "/v1/completions, 200 such prompts, echo + logprobs": lambda s: [
        s.post("/v1/completions", {"prompt": [HEAVY] * 200, "echo": True, "logprobs": 5, "max_tokens": 50})
    ],
    "/v1/completions max_tokens 10^6": lambda s: [s.post("/v1/completions", {"prompt": "the", "max_tokens": 10**6})],
    "/tokenize of 20,000 `'`": lambda s: [s.post("/tokenize", {"prompt": "'" * 20000})],
    "5 MB body": lambda s: [s.post("/score", {"text": "a " * (5 * MIB // 2)})],
    "JSON nested 5,000 deep": lambda s: [s.post("/score", nested(5000))],
    "invalid UTF-8 in the body": lambda s: [s.post("/score", b'{"text": "\xff\xfe"}')],
    "`text/plain` body": lambda s: [s.post("/score", b'{"text": "a"}', {"content-type": "text/plain"})],
    '`{"sentence": ...}` (wrong field)': lambda s: [s.post("/score", {"sentence": "the"})],
    "`top_k` 10^30": lambda s: [s.post("/next-word", {"prefix": "the", "top_k": 10**30})],
    "no API key": lambda s: [s.post("/score", {"text": "the"}, {"Authorization": ""})],
    "`X-Forwarded-For: <script>`": lambda s: [
        httpx.get(s.base + "/healthz", headers={"X-Forwarded-For": "<script>"}, timeout=30).status_code
    ],
    "a client hanging up mid-upload": hang_up_mid_upload,
    "a stalled upload with the key (2 s body timeout)": lambda s: stalled_uploads(s, 1, "/score", key=True),
    "300 stalled 4 MB uploads without a key": lambda s: stalled_uploads(s, 300, "/score", key=False),
    "50 stalled 4 MB uploads to /healthz": lambda s: stalled_uploads(s, 50, "/healthz", key=False),
    "50 stalled 4 MB uploads to an unknown path": lambda s: stalled_uploads(s, 50, "/nowhere", key=False),
    "40 MB unfinished header": huge_header,
    "1,000 header fields": many_headers,
    "100 slow-loris connections (head never ends)": lambda s: slow_loris(s, 100),
    "100 silent connections": lambda s: silent(s, 100),
}


def normal_traffic(s: Server, stop: threading.Event, statuses: dict[int, int], lock: threading.Lock) -> None:
    bodies = [("/score", {"sentences": ["the stock market rose", "mr. smith said profits fell"]}),
              ("/next-word", {"prefix": "the stock", "top_k": 5, "candidates": ["market"]})]  # fmt: skip
    with httpx.Client(timeout=30, headers={**AUTH}) as c:
        n = 0
        while not stop.is_set():
            path, body = bodies[n % 2]
            n += 1
            try:
                code = c.post(s.base + path, json=body).status_code
            except httpx.TransportError:
                code = 0
            with lock:
                statuses[code] += 1


def poll_health(s: Server, stop: threading.Event, took: list[float], statuses: dict[int, int]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                code = c.get(s.base + "/healthz").status_code
            except httpx.TransportError:
                code = 0
            took.append(time.perf_counter() - start)
            statuses[code] += 1
            time.sleep(0.05)


def watch_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mib(pid))
        time.sleep(0.05)


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [0.0])[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the hostile cases go round")
    p.add_argument("--settle", type=float, default=10.0, help="seconds of normal traffic after, before RSS")
    p.add_argument("--model", default=None, help="checkpoint (default: the service's default)")
    p.add_argument("--no-write", action="store_true", help=f"only print; do not write {RELIABILITY.name}")
    args = p.parse_args()
    env = {"LMSERVE_API_KEY": KEY, "LMSERVE_REQUEST_TIMEOUT_S": TIMEOUT_S, "LMSERVE_BODY_TIMEOUT_S": "2"}
    proc, base = start_server(["--model", args.model] if args.model else [], env=env)
    s = Server(base)
    lock = threading.Lock()
    normal: dict[int, int] = defaultdict(int)
    health_codes: dict[int, int] = defaultdict(int)
    health: list[float] = []
    peak = [0.0]
    stop_all, stop_rss = threading.Event(), threading.Event()
    try:
        for _ in range(20):  # warm: the allocator's pools at the normal traffic's sizes
            s.post("/score", {"sentences": ["the stock market rose"]})
        before = rss_mib(proc.pid)
        threads = [
            threading.Thread(target=normal_traffic, args=(s, stop_all, normal, lock)),
            threading.Thread(target=normal_traffic, args=(s, stop_all, normal, lock)),
            threading.Thread(target=poll_health, args=(s, stop_all, health, health_codes)),
            threading.Thread(target=watch_rss, args=(proc.pid, stop_rss, peak)),
        ]
        for t in threads:
            t.start()
        answers: dict[str, list[tuple[object, float]]] = defaultdict(list)
        end = time.monotonic() + args.seconds
        rounds = 0
        while time.monotonic() < end:
            rounds += 1
            for name, case in CASES.items():
                start = time.perf_counter()
                try:
                    outcome = case(s)
                except httpx.TransportError as e:
                    outcome = [type(e).__name__]
                took = time.perf_counter() - start
                answers[name] += [(o, took) for o in outcome]
            print(f"round {rounds} done", flush=True)
        hostile_done = time.monotonic()
        time.sleep(args.settle)  # normal traffic and /healthz only
        after = rss_mib(proc.pid)
        stop_all.set()
        stop_rss.set()
        for t in threads:
            t.join(60)
        peak[0] = max(peak[0], after)
    finally:
        code = stop_server(proc)
    rows = []
    normal_5xx = sum(n for c, n in normal.items() if c >= 500) + sum(n for c, n in health_codes.items() if c >= 500)
    hostile_504 = hostile_other_5xx = 0
    for name, got in answers.items():
        counts: dict[str, int] = defaultdict(int)
        for outcome, _ in got:
            counts[str(outcome)] += 1
            hostile_504 += outcome == 504
            hostile_other_5xx += isinstance(outcome, int) and outcome >= 500 and outcome != 504
        times = [t for _, t in got]
        seen = ", ".join(f"{o} x {n}" for o, n in sorted(counts.items()))
        rows.append([name, seen, f"{max(times):.2f}"])
    cases = table(["hostile case", "answers (status x count)", "slowest (s)"], rows)
    normal_seen = ", ".join(f"{c} x {n}" for c, n in sorted(normal.items()))
    overall = table(
        ["figure", "value"],
        [
            ["rounds of every hostile case", str(rounds)],
            ["normal /score and /next-word answers", normal_seen],
            ["`/healthz` p50 / p99 / max (ms)", " / ".join(f"{1000 * v:.1f}" for v in
                                                         (quantile(health, 50), quantile(health, 99), max(health)))],
            ["server RSS before / peak / after (MiB)", f"{before:.1f} / {peak[0]:.1f} / {after:.1f}"],
            ["RSS after vs before", f"{100 * (after - before) / before:+.1f} %"],
            ["5xx to normal traffic and /healthz", str(normal_5xx)],
            [f"504 to hostile cases (past the {TIMEOUT_S} s request timeout)", str(hostile_504)],
            ["other 5xx to hostile cases", str(hostile_other_5xx)],
            ["server exit code after SIGTERM", str(code)],
        ],
    )  # fmt: skip
    body = (
        f"{cases}\n\n{overall}\n\nRSS after: {args.settle:g} s after the last hostile case "
        f"({time.monotonic() - hostile_done:.0f} s of normal traffic and polling in all). A time is the whole "
        "case's (for the many-connection cases, all its connections answered or closed)."
    )
    print(body)
    if not args.no_write:
        write_section("hostile", "Hostile soak", body, report=RELIABILITY)


if __name__ == "__main__":
    main()
