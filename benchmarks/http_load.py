"""HTTP load: the server started as a user starts it (`python -m service`), driven by `wrk` on 127.0.0.1.

    python -m benchmarks.http_load                      # every endpoint, concurrency 1-128, three server setups
    python -m benchmarks.http_load --seconds 3 --concurrency 8 64 --setups batching --no-write
    python -m benchmarks.http_load --peers              # against LitServe, Ray Serve (benchmarks/peers/compare.py)
    python -m benchmarks.http_load --device cuda --model runs/gpu/models/ptb-large --setups batching \
        --endpoints "/score 1" --concurrency 1 8 32 64 128 256 --no-write --json http.json

Endpoints: `/healthz` (the framework's floor), `/score` with one PTB test sentence per request (drawn at random
for every request by wrk's Lua script), `/score` with 32 random sentences per request, and `/next-word` for a
random prefix (the first 0-20 words of a random test sentence; top_k 10). Each run is closed-loop: `c`
connections for `--seconds` seconds after a one-second warm-up. Tokens/s are requests/s x the mean predictions
per request of the body pool (`/score`: words + `<eos>`; `/next-word`: one). Errors are connection errors,
timeouts and non-2xx answers.

Server setups: `batching` (the defaults: 1 worker, dynamic batching, float32, torch's thread count),
`no-batching` (LMSERVE_MAX_BATCH_SEQUENCES=1: one sequence per forward pass), `2-workers` (--workers 2,
LMSERVE_THREADS=1 each, so that two processes do not fight over two cores), `1-thread` (LMSERVE_THREADS=1: one
core for torch, one for the event loop) and `bf16` (--dtype bfloat16). wrk shares the machine's cores with the
server. Where wrk is missing (or with `--load python`), `benchmarks.loadgen` drives the same closed loop from
Python processes. After each run the server's `/metrics` gives the mean batch (sequences per forward pass) of
that run: how much the batching engine found to combine. `--device` is the server's (`LMSERVE_DEVICE`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    DEFAULT_DATA_DIR,
    REPORT,
    ptb_test_sentences,
    start_server,
    stop_server,
    table,
    write_section,
)

LUA = r"""
local bodies = {}
local path = os.getenv("WRK_BODIES")
if path then
  for line in io.lines(path) do bodies[#bodies + 1] = line end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("seed", #threads)
end
function init(args)
  math.randomseed(seed * 7919 + os.time())
  busy = 0  -- 429 answers seen by this thread
end
function request()
  if #bodies == 0 then return wrk.format() end
  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])
end
function response(status, headers, body)
  if status == 429 then busy = busy + 1 end
end
function done(summary, latency, requests)
  local e = summary.errors
  local rejected = 0
  for _, t in ipairs(threads) do rejected = rejected + t:get("busy") end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "busy": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, rejected))
end
"""

SETUPS = {
    "batching": ([], {}),
    "no-batching": ([], {"LMSERVE_MAX_BATCH_SEQUENCES": "1"}),
    "2-workers": (["--workers", "2"], {"LMSERVE_THREADS": "1"}),
    "1-thread": ([], {"LMSERVE_THREADS": "1"}),
    "bf16": (["--dtype", "bfloat16"], {}),
}
ENDPOINTS = ["/healthz", "/score 1", "/score 32", "/next-word"]
# What each setup is run on unless --endpoints says otherwise: batching is off only for the scoring endpoints,
# and the thread and dtype variants skip /healthz (which runs no model).
SETUP_ENDPOINTS = {
    "batching": ENDPOINTS,
    "no-batching": ["/score 1", "/score 32"],
    "2-workers": ENDPOINTS,
    "1-thread": ["/score 1", "/score 32", "/next-word"],
    "bf16": ["/score 1", "/score 32", "/next-word"],
}


def body_pools(data_dir: Path, seed: int = 0, size: int = 2000) -> dict[str, tuple[str, list[str], float]]:
    """endpoint name -> (path, one JSON body per line, mean predictions per request)."""
    lines = ptb_test_sentences(data_dir)
    rng = random.Random(seed)
    one = [json.dumps({"text": s}) for s in lines]
    one_tokens = sum(len(s.split()) + 1 for s in lines) / len(lines)
    many, many_tokens = [], 0
    for _ in range(size // 4):
        batch = rng.sample(lines, 32)
        many.append(json.dumps({"sentences": batch}))
        many_tokens += sum(len(s.split()) + 1 for s in batch)
    prefixes = []
    for _ in range(size):
        words = rng.choice(lines).split()
        prefixes.append(json.dumps({"prefix": " ".join(words[: rng.randint(0, min(20, len(words)))]), "top_k": 10}))
    return {
        "/healthz": ("/healthz", [], 0.0),
        "/score 1": ("/score", one, one_tokens),
        "/score 32": ("/score", many, many_tokens / len(many)),
        "/next-word": ("/next-word", prefixes, 1.0),
    }


def wrk(base: str, path: str, bodies_file: Path | None, script: Path, connections: int, seconds: float) -> dict:
    threads = min(2, connections)
    env = {"WRK_BODIES": str(bodies_file)} if bodies_file else {}
    duration = f"{max(1, round(seconds))}s"  # wrk takes whole seconds
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", duration, "--timeout", "10s"]
    cmd += ["-s", str(script), base + path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(base: str, path: str, bodies_file: Path | None, script: Path, connections: int, seconds: float) -> dict:
    """One closed-loop run: wrk where it is installed, else the Python load generator; wrk's result fields."""
    if uses_wrk():
        return wrk(base, path, bodies_file, script, connections, seconds)
    from benchmarks import loadgen

    bodies = bodies_file.read_text(encoding="utf-8").splitlines() if bodies_file else []
    return loadgen.run(base + path, bodies, connections, seconds)


LOADER = "auto"  # set by --load


def uses_wrk() -> bool:
    return LOADER == "wrk" or (LOADER == "auto" and shutil.which("wrk") is not None)


def batch_totals(base: str) -> tuple[float, float, float]:
    """(sequences, forward passes, seconds in forward passes) the server has run so far, from its /metrics
    histograms of batch sizes and durations."""
    names = ["lmserve_batch_size_sum", "lmserve_batch_size_count", "lmserve_batch_inference_duration_seconds_sum"]
    totals = dict.fromkeys(names, 0.0)
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in totals:
            totals[name] = float(value)
    return totals[names[0]], totals[names[1]], totals[names[2]]


def wait_idle(base: str, timeout_s: float = 60.0) -> None:
    """Until the server's queue is empty (the requests wrk abandoned at its end are answered or dropped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(base + "/readyz", timeout=5).json().get("queue_size") == 0:
            time.sleep(0.2)  # and the forward pass under way finishes
            return
        time.sleep(0.1)
    raise SystemExit("the server's queue did not empty")


PLOT = REPORT.parent / "http-load.png"


def plot(rows: list[list[str]], path: Path = PLOT) -> None:
    """Answered requests/s and p99 latency against concurrency: one panel per endpoint, one line per setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(dict.fromkeys(r[1] for r in rows))
    setups = list(dict.fromkeys(r[0] for r in rows))
    colors = {setup: f"C{i}" for i, setup in enumerate(setups)}  # one colour per setup in every panel
    fig, axes = plt.subplots(2, len(endpoints), figsize=(3.6 * len(endpoints), 6.4), squeeze=False)
    for j, endpoint in enumerate(endpoints):
        for setup in setups:
            points = [r for r in rows if r[0] == setup and r[1] == endpoint]
            if not points:
                continue
            c, color = [int(r[2]) for r in points], colors[setup]
            axes[0][j].plot(c, [float(r[3].replace(",", "")) for r in points], marker="o", color=color)
            axes[1][j].plot(c, [float(r[7].replace(",", "")) for r in points], marker="o", color=color)
        axes[0][j].set_title(endpoint)
        for i in (0, 1):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_xlabel("concurrent clients")
            axes[i][j].grid(alpha=0.3)
        axes[1][j].set_yscale("log")
    axes[0][0].set_ylabel("answered requests/s")
    axes[1][0].set_ylabel("p99 latency (ms)")
    handles = [plt.Line2D([], [], color=colors[s], marker="o", label=s) for s in setups]
    fig.legend(handles=handles, loc="upper center", ncol=len(setups), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def report_rows(report: Path = REPORT) -> list[list[str]]:
    """The rows of the HTTP table in the report (for --plot-only)."""
    text = report.read_text(encoding="utf-8")
    section = text.split("<!-- begin http -->", 1)[1].split("<!-- end http -->", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| server ")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peers"]:  # the comparison with other serving frameworks: benchmarks/peers/compare.py
        from benchmarks.peers import compare

        compare.main(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64, 128])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--endpoints", nargs="+", default=None, choices=ENDPOINTS, help="default: per setup")
    p.add_argument("--model", default=None, help="checkpoint (default: the service's default, models/ptb-cpu)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    p.add_argument("--plot-only", action="store_true", help="redraw docs/http-load.png from the report's table")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="the server's (default: auto)")
    p.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed")
    p.add_argument("--json", type=Path, default=None, help="also write every run's figures to this JSON file")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(report_rows())
        return
    global LOADER
    LOADER = args.load
    if LOADER == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk), or --load python")

    pools = body_pools(args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="http-load-"))
    script = tmp / "bodies.lua"
    script.write_text(LUA)
    files = {}
    for name, (_, bodies, _) in pools.items():
        if bodies:
            files[name] = tmp / f"{len(files)}.jsonl"
            files[name].write_text("\n".join(bodies) + "\n")

    rows, results = [], {}
    for setup in args.setups:
        server_args, env = SETUPS[setup]
        device = ["--device", args.device] if args.device else []
        proc, base = start_server([*(["--model", args.model] if args.model else []), *device, *server_args], env)
        try:
            for name in args.endpoints or SETUP_ENDPOINTS[setup]:
                path, _, tokens = pools[name]
                for c in args.concurrency:
                    load(base, path, files.get(name), script, c, 1.0)  # warm-up
                    wait_idle(base)  # what the warm-up left in flight is not this run's
                    seqs0, passes0, _ = batch_totals(base)
                    r = load(base, path, files.get(name), script, c, args.seconds)
                    wait_idle(base)
                    seqs1, passes1, _ = batch_totals(base)
                    mean_batch = (seqs1 - seqs0) / (passes1 - passes0) if passes1 > passes0 else 0.0
                    # Answered: 2xx. Busy: 429 (queue full: the documented back-pressure). Errors: the rest.
                    seconds = r["duration_us"] / 1e6
                    rps = (r["requests"] - r["status"]) / seconds
                    errors = r["connect"] + r["read"] + r["write"] + r["status"] - r["busy"] + r["timeout"]
                    results[(setup, name, c)] = {**r, "rps": rps, "errors": errors, "mean_batch": mean_batch}
                    row = [
                        setup,
                        name,
                        str(c),
                        f"{rps:,.0f}",
                        f"{rps * tokens:,.0f}" if tokens else "",
                        f"{r['p50_us'] / 1000:.1f}",
                        f"{r['p95_us'] / 1000:.1f}",
                        f"{r['p99_us'] / 1000:.1f}",
                        f"{mean_batch:.1f}",
                        f"{r['busy'] / seconds:,.0f}" if r["busy"] else "0",
                        str(errors),
                    ]
                    rows.append(row)
                    print("  ".join(row), flush=True)
        finally:
            code = stop_server(proc)
            if code != 0:
                print(f"warning: the server exited with code {code}")
    shutil.rmtree(tmp)

    header = ["server", "endpoint", "conc.", "answered/s", "tokens/s", "p50 ms", "p95 ms", "p99 ms", "batch"]
    header += ["429/s", "errors"]
    body = (
        f"Closed loop, {args.seconds:g} s per run after a 1 s warm-up, "
        f"{'wrk with 2 threads (1 at concurrency 1)' if uses_wrk() else 'the Python load generator'}. "
        "answered/s counts 2xx answers; 429/s the requests refused because the queue was full (the server's "
        "back-pressure, `LMSERVE_MAX_QUEUE`=2048 sequences: 64 clients x 32 sentences fill it); errors are "
        "everything else (connection errors, timeouts, other non-2xx). Latency quantiles are over all answers; "
        "batch is the mean sequences per forward pass. "
        f"Mean predictions per request: /score 1 {pools['/score 1'][2]:.1f}, /score 32 {pools['/score 32'][2]:.0f}."
        "\n\n" + table(header, rows)
    )
    summary = targets(results)
    if summary:
        body += "\n\n" + summary
    print(body)
    if args.json:
        runs = [{"setup": k[0], "endpoint": k[1], "concurrency": k[2], **v} for k, v in results.items()]
        args.json.write_text(json.dumps({"device": args.device or "auto", "runs": runs}, indent=1) + "\n")
    if not args.no_write:
        write_section("http", "HTTP load", body)
        plot(rows)


def targets(results: dict) -> str:
    """The issue's targets, read off this run's table."""
    lines = []
    s1, hz = results.get(("batching", "/score 1", 64)), results.get(("batching", "/healthz", 64))
    if s1 and hz:
        lines.append(
            f"- `/score`, one sentence, concurrency 64: {s1['rps']:,.0f} requests/s = **{s1['rps'] / hz['rps']:.0%}** "
            f"of `/healthz` ({hz['rps']:,.0f}); p99 {s1['p99_us'] / 1000:.1f} ms; {s1['errors']} errors."
        )
    for c in (32, 64, 128):
        on, off = results.get(("batching", "/score 32", c)), results.get(("no-batching", "/score 32", c))
        if on and off:
            lines.append(
                f"- `/score`, 32 sentences, concurrency {c}: batching on {on['rps']:,.1f} requests/s vs off "
                f"{off['rps']:,.1f}: **{on['rps'] / off['rps']:.1f}x**."
            )
    return "Against the targets:\n\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    main()
