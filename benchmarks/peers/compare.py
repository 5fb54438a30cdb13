"""The service against what a user would pick instead, same model, same requests, same client, one run.

    python -m benchmarks.http_load --peers                  # the whole comparison (about 7 minutes), writes its
                                                            # section of docs/benchmarks.md
    python -m benchmarks.http_load --peers --seconds 2 --concurrency 64 --peer-setups lmserve litserve \
        --litserve-flags="--max-batch-size 32 --batch-timeout 0.002" --no-write

Setups: `lmserve` (`python -m service`, its defaults: dynamic batching, float32, two forward lanes on a CPU of
two or more threads), `lmserve-2w` (the same with `--workers 2` and LMSERVE_THREADS=1: one worker per core, one
lane each), `lmserve-1l` (LMSERVE_FORWARD_LANES=1: one batch at a time on every thread), `no-batching` (the
service with LMSERVE_MAX_BATCH_SEQUENCES=1), `litserve` (LitServe's
`max_batch_size`/`batch_timeout` batching around plain torch: `benchmarks/peers/litserve_server.py`) and
`ray-serve` (Ray Serve's `@serve.batch`: `benchmarks/peers/ray_server.py`); on demand, `lmserve-bare` (the
defaults with `/score` answered without the HTTP framework, `benchmarks.instrumented --bare`: not a service, the
bound of leaner HTTP handling; `--peer-setups lmserve lmserve-bare --endpoints "/score 1" --no-write`). LitServe is
tuned first, in the
same run: every setting of LITSERVE_SWEEP (its docs' batching knobs, batch size and timeout, and two inference
workers of one thread each) at `/score` one sentence, concurrency 64; its best (answered/s, no errors) is the
one compared. Then each setup runs alone (an idle peer is not idle: LitServe's processes poll their queues,
about 87 % of a core between them, and Ray's about 35 %, which would be taken from whichever server is being
measured): started, measured at every point (endpoint, concurrency), stopped; `--rounds` rounds, every other
one in reverse order so that a shared machine's drift hits all alike, and each point's best round is kept.
After each of our setups in every round, the in-process ceiling (`Ceiling`): `ModelRunner.run` on PTB test
sentences at the mean batch size the service formed at each of its `/score` points in that round, run as the
setup runs its passes; measured then, not at the end of the run, so that the machine's drift weighs on both
figures of a ratio alike.

Ray binds the machine's external address whatever it is told, so with `ray-serve` among the setups the whole run
moves into a private network namespace where only loopback exists (`unshare -n`, root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from benchmarks.common import DEFAULT_DATA_DIR, REPO, free_port, table, write_section
from service.runner import default_lanes, wide_threads

PEER_SETUPS = ("lmserve", "lmserve-2w", "lmserve-1l", "no-batching", "litserve", "ray-serve")  # the default run
PEERS = ("litserve", "ray-serve")  # the other frameworks; `no-batching` is the service itself, unbatched


@dataclass(frozen=True)
class Ours:
    """How one of our setups runs: uvicorn workers, forward lanes in each (None: the service's choice), torch
    threads in each (None: torch's choice). The servers are started so, and the engine in process is run so to
    compare with them."""

    workers: int = 1
    lanes: int | None = None
    threads: int | None = None
    bare: bool = False  # `/score` answered without the HTTP framework (`benchmarks.instrumented --bare`): a bound

    def lanes_on(self, threads: int) -> int:
        """The lanes each worker runs on a CPU whose torch has `threads` threads."""
        return self.lanes or default_lanes(torch.device("cpu"), self.threads or threads)


# The service as its docs advise: its defaults (two forward lanes on this CPU); one worker per core, 1 thread each
# (one lane each); and one forward lane, as the service ran before lanes were its default.
# On demand only (`--peer-setups lmserve lmserve-bare --endpoints "/score 1"`), not a service: the defaults with
# `/score` answered in the HTTP protocol itself, no ASGI app or middleware, the bound of leaner HTTP handling.
OUR_SETUPS = {
    "lmserve": Ours(),
    "lmserve-2w": Ours(workers=2, threads=1),
    "lmserve-1l": Ours(lanes=1),
    "lmserve-bare": Ours(bare=True),
}
DESCRIBED = ("LMSERVE_WORKERS", "LMSERVE_THREADS", "LMSERVE_FORWARD_LANES")  # what a setup says, not the caller
OURS = tuple(OUR_SETUPS)
SERVICE = (*OURS, "no-batching")  # the setups that are `python -m service` (their /metrics tell the batch)
ENDPOINTS = ("/score 1", "/next-word")  # the peers take one sentence or prefix per request
# LitServe's batching knobs (its docs: `max_batch_size`, `batch_timeout` in seconds), one inference worker with
# torch's threads, as the service runs; and its scaling knob (`workers_per_device`): two inference processes of
# one torch thread each, as `lmserve-2w` runs.
LITSERVE_SWEEP = [("--max-batch-size", b, "--batch-timeout", t) for b in ("16", "32", "64") for t in ("0.002", "0.01")]
LITSERVE_SWEEP += [
    ("--max-batch-size", b, "--batch-timeout", "0.002", "--workers-per-device", "2", "--threads", "1")
    for b in ("16", "32")
]
RAY_FLAGS = ("--max-batch-size", "32", "--batch-wait-timeout-s", "0.005")  # @serve.batch: size and wait
TARGET_RATIO = 1.5  # ours / the best peer, answered/s at concurrency 64
TARGET_ENGINE = 0.8  # HTTP tokens/s / in-process tokens/s at the same batch size
ENGINE_HEADER = [
    "setup",
    "conc.",
    "mean batch",
    "HTTP tokens/s",
    "in-process tokens/s",
    "HTTP / in-process",
    "forward ms, server",
    "forward ms, in process",
]


@dataclass
class Point:
    """One closed-loop measurement: answered/s, latency quantiles (ms), errors, the service's mean batch."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    batch: float = 0.0
    forward_ms: float = 0.0  # the service's mean forward pass per batch over the run, as its engine timed it


def ratio(ours: float, theirs: float) -> str:
    """`ours / theirs` as `2.00x`; `-` where the peer answered nothing."""
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def command(setup: str, port: int, model: str, flags: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that start `setup` on 127.0.0.1:port."""
    if setup in SERVICE:
        env = {"LMSERVE_MAX_BATCH_SEQUENCES": "1"} if setup == "no-batching" else {}
        ours = OUR_SETUPS.get(setup)
        module = ["benchmarks.instrumented", "--bare"] if ours is not None and ours.bare else ["service"]
        cmd = [sys.executable, "-m", *module, "--model", model, "--port", str(port), "--log-level", "warning"]
        if ours is not None:  # as it is described, whatever the environment says
            if ours.workers > 1:
                cmd += ["--workers", str(ours.workers)]
            if ours.threads is not None:
                env["LMSERVE_THREADS"] = str(ours.threads)
            if ours.lanes is not None:
                env["LMSERVE_FORWARD_LANES"] = str(ours.lanes)
        return cmd, env
    module = {"litserve": "litserve_server", "ray-serve": "ray_server"}[setup]
    flags = flags or (LITSERVE_SWEEP[0] if setup == "litserve" else RAY_FLAGS)
    return [sys.executable, "-m", f"benchmarks.peers.{module}", "--model", model, "--port", str(port), *flags], {}


def environment(setup: str, env: dict[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: ours and `env` over the caller's, less what one of our setups describes (a
    setup that leaves its lanes to the service does so whatever the caller's LMSERVE_FORWARD_LANES says)."""
    kept = {k: v for k, v in inherited.items() if setup not in OUR_SETUPS or k not in DESCRIBED}
    return {**kept, **env}


def start(setup: str, model: str, flags: Sequence[str] = (), timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Start `setup` in a process group of its own (a peer's helper processes go with it); returns once it has
    scored a sentence (its model is loaded and warm)."""
    port = free_port()
    cmd, env = command(setup, port, model, flags)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=environment(setup, env, os.environ), stdout=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{setup} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(base + "/score", json={"text": "the"}, timeout=5).status_code == 200:
                return proc, base
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{setup} did not answer within {timeout_s:g} s")


def stop(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM to the server's process group; SIGKILL past the timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def private_network(argv: Sequence[str]) -> None:
    """Run this comparison again inside a new network namespace with only loopback up (for Ray), unless it is
    already in one; returns only in the namespace."""
    if os.environ.get("PEERS_NETNS") == "1":
        return
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("ray-serve needs unshare and ip (util-linux, iproute2), as root, for a private network")
    cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash"]
    cmd += [sys.executable, "-m", "benchmarks.http_load", "--peers", *argv]
    print("ray-serve: the run moves into a private network namespace (loopback only)", flush=True)
    sys.exit(subprocess.run(cmd, cwd=REPO, env={**os.environ, "PEERS_NETNS": "1"}).returncode)


def table_rows(results: dict[tuple[str, str, int], Point], tokens: dict[str, float]) -> list[list[str]]:
    """One row per (setup, endpoint, concurrency), in the order measured."""
    rows = []
    for (s, name, c), p in results.items():
        batch = f"{p.batch:.1f}" if s in SERVICE else ""
        rows.append([s, name, str(c), f"{p.rps:,.0f}", f"{p.rps * tokens[name]:,.0f}", f"{p.p50_ms:.1f}"])
        rows[-1] += [f"{p.p99_ms:.1f}", batch, str(p.errors)]
    return rows


def ratio_rows(results: dict[tuple[str, str, int], Point]) -> tuple[list[str], list[list[str]]]:
    """Each of ours against each other setup at every point both ran: answered/s ratio and p99 of each."""
    others = list(dict.fromkeys(s for s, _, _ in results if s not in OURS))
    header = ["ours", "endpoint", "conc.", *[f"/ {s}" for s in others], "p99 ms", *[f"{s} p99 ms" for s in others]]
    rows = []
    for (s, name, c), ours in results.items():
        if s not in OURS:
            continue
        theirs = [results.get((o, name, c)) for o in others]
        rows.append(
            [s, name, str(c), *[ratio(ours.rps, t.rps) if t else "" for t in theirs], f"{ours.p99_ms:.1f}"]
            + [f"{t.p99_ms:.1f}" if t else "" for t in theirs]
        )
    return header, rows


def engine_point(setup: str, concurrency: int, batch: float, threads: int) -> tuple[int, int, int]:
    """(passes, threads, batch): how the in-process engine runs to compare with `setup` at that concurrency, where
    the service formed batches of `batch` on average, on a machine whose torch has `threads` threads: as many
    passes side by side as the setup has lanes or workers and the clients fill (64 clients, batches of 11: 2;
    one client: 1), each with its share of the threads (a lone pass of `lmserve` on the threads the service gives
    it, `service.runner.wide_threads`: every thread on two cores) or, for `lmserve-2w`, one."""
    ours = OUR_SETUPS[setup]
    rows = max(1, round(batch))
    # Two workers' passes are two threads of one process in the measurement (the forward pass is nearly all
    # kernels).
    lanes = ours.lanes_on(threads)
    passes = max(1, min(ours.workers * lanes, concurrency // rows))
    alone = wide_threads(threads, lanes)
    return passes, ours.threads or (alone if passes == 1 else max(1, threads // passes)), rows


def engine_measured(results: dict[tuple[str, str, int], Point]) -> list[tuple[str, int, Point]]:
    """(setup, concurrency, point) of each `/score` one-sentence point to hold against the engine in process."""
    return [(s, c, p) for (s, name, c), p in results.items() if s in OUR_SETUPS and name == "/score 1" and p.batch > 0]


def engine_points(results: dict[tuple[str, str, int], Point], threads: int) -> list[tuple[int, int, int]]:
    """(passes, threads, batch) of each in-process measurement the engine rows need."""
    return [engine_point(s, c, p.batch, threads) for s, c, p in engine_measured(results)]


def engine_rows(
    results: dict[tuple[str, str, int], Point],
    engine: dict[tuple[str, int, int, int], tuple[float, float]],
    tokens: dict[str, float],
    threads: int,
) -> list[list[str]]:
    """`/score` one sentence over HTTP against the in-process engine, with the server's forward lanes, at the
    batch size the service formed, and the time of one forward pass of that batch in each."""
    rows = []
    for s, c, p in engine_measured(results):
        http = p.rps * tokens["/score 1"]
        inproc, inproc_ms = engine[(s, *engine_point(s, c, p.batch, threads))]
        rows.append(
            [
                s,
                str(c),
                f"{p.batch:.1f}",
                f"{http:,.0f}",
                f"{inproc:,.0f}",
                f"{http / inproc:.0%}",
                f"{p.forward_ms:.1f}",
                f"{inproc_ms:.1f}",
            ]
        )
    return rows


def targets(results: dict[tuple[str, str, int], Point], engine: list[list[str]]) -> list[str]:
    """The targets read off this run: met or not, with the figures."""
    lines = []
    for name, setup in [(n, s) for n in ENDPOINTS for s in OURS]:
        ours = results.get((setup, name, 64))
        peers = {s: p for (s, n, c), p in results.items() if n == name and c == 64 and s in PEERS}
        if ours is None or not peers:
            continue
        best = max(peers, key=lambda s: peers[s].rps)
        theirs = peers[best]
        met = ours.rps >= TARGET_RATIO * theirs.rps and (name != "/score 1" or ours.p99_ms < theirs.p99_ms)
        lines.append(
            f"- `{name}`, concurrency 64, {setup} >= {TARGET_RATIO}x the best peer"
            f"{' with a lower p99' if name == '/score 1' else ''}: {ours.rps:,.0f} answered/s (p99 {ours.p99_ms:.1f} "
            f"ms) against {best}'s {theirs.rps:,.0f} (p99 {theirs.p99_ms:.1f} ms): {ratio(ours.rps, theirs.rps)}, "
            f"**{'met' if met else 'not met'}**."
        )
    for setup, c, batch, _, _, share, *_ in engine:
        met = float(share.rstrip("%")) / 100 >= TARGET_ENGINE
        lines.append(
            f"- {setup}: HTTP tokens/s >= {TARGET_ENGINE:.0%} of the in-process engine's at the same batch size "
            f"(concurrency {c}, batch {batch}): {share}, **{'met' if met else 'not met'}**."
        )
    return lines


class Ceiling:
    """The engine in process (`ModelRunner.run`, float32, `sentences` PTB test sentences) at (passes, threads,
    batch) points, `passes` batches at a time, each in its own thread with `threads` torch threads (as the
    service's forward lanes, or its workers, run them under load): tokens/s of each point as measured when asked
    (the median of 3 passes over the sentences), each setup's best of a point kept, as for the HTTP points. The
    run asks for a setup's points right after that setup's HTTP points in every round, so that the shared
    machine's drift (the same setup moves by a quarter between runs half an hour apart) weighs on the ceiling as it
    weighed on the HTTP figures it is held against."""

    def __init__(self, model: str, data_dir: Path, sentences: int) -> None:
        self.model, self.data_dir, self.sentences = model, data_dir, sentences
        self.best: dict[tuple[str, int, int, int], float] = {}  # (setup, passes, threads, batch) -> tokens/s
        self._runner = None

    def measure(self, setup: str, points: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], float]:
        """Each point once (in order, each once), for `setup`: its tokens/s now, also kept if it is the best of
        that setup's rounds. A point two setups share (one client: one pass alone on every thread) keeps a best
        for each, so that each side of every ratio is the best of as many rounds as the other."""
        from benchmarks.engine import throughput

        if self._runner is None:
            self._load()
        now = {}
        for n, t, b in sorted(set(points)):
            now[n, t, b] = throughput(self._runner, self._seqs, b, repeats=3, lanes=n, threads=t)
            self.best[setup, n, t, b] = max(now[n, t, b], self.best.get((setup, n, t, b), 0.0))
        return now

    def figures(self) -> dict[tuple[str, int, int, int], tuple[float, float]]:
        """Each (setup, point) measured: (its best tokens/s, the milliseconds one of its batches, of sentences of
        the mean length, takes at that rate, `n` of them side by side); none when nothing was measured."""
        if not self.best:
            return {}
        per_row = self._predictions / len(self._seqs)
        return {(s, n, t, b): (rate, 1000 * n * b * per_row / rate) for (s, n, t, b), rate in self.best.items()}

    def _load(self) -> None:
        from benchmarks.engine import sentences_ids
        from lm.checkpoint import load_checkpoint
        from service.runner import ModelRunner
        from service.settings import Settings

        ckpt = load_checkpoint(self.model)
        self._seqs = sentences_ids(ckpt, self.data_dir, self.sentences)
        self._predictions = sum(len(s) - 1 for s in self._seqs)
        # Each pass sets its own threads.
        self._runner = ModelRunner(ckpt, Settings(model=self.model, device="cpu"))


def sweep_litserve(model: str, run: Callable[[str, str, int, float], Point], seconds: float) -> tuple[list[str], list]:
    """Every LITSERVE_SWEEP setting at `/score` one sentence, concurrency 64: the best flags and the rows."""
    rows, best = [], None
    for flags in LITSERVE_SWEEP:
        try:
            proc, base = start("litserve", model, flags)
        except RuntimeError as e:
            print(f"warning: litserve {' '.join(flags)}: {e}", flush=True)
            continue
        try:
            p = run("litserve", base, 64, seconds)
        finally:
            stop(proc)
        rows.append([" ".join(flags), f"{p.rps:,.0f}", f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}", str(p.errors)])
        print("litserve sweep  " + "  ".join(rows[-1]), flush=True)
        if p.errors == 0 and (best is None or p.rps > best[0]):
            best = (p.rps, list(flags), len(rows) - 1)
    if best is None:
        return [], rows
    rows[best[2]] = [f"**{cell}**" for cell in rows[best[2]]]
    return best[1], rows


def main(argv: list[str]) -> None:
    """The comparison; `argv` are the flags after `--peers`."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_load --peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--peer-setups", nargs="+", default=list(PEER_SETUPS), choices=[*PEER_SETUPS, "lmserve-bare"])
    p.add_argument("--endpoints", nargs="+", default=list(ENDPOINTS), choices=ENDPOINTS)
    p.add_argument(
        "--litserve-flags", default=None, help="skip the sweep: LitServe with these flags ('--max-batch-size 32 ...')"
    )
    p.add_argument("--sweep-seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2, help="rounds over the setups (every other one reversed)")
    p.add_argument("--engine-sentences", type=int, default=256, help="PTB test sentences for the in-process ceiling")
    p.add_argument("--model", default=str(REPO / "models" / "ptb-cpu"))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if "ray-serve" in args.peer_setups:
        private_network(argv)

    from benchmarks.http_load import LUA, batch_totals, body_pools, load, wait_idle

    pools = body_pools(args.data_dir)
    tokens = {name: pools[name][2] for name in ENDPOINTS}
    tmp = Path(tempfile.mkdtemp(prefix="peers-"))
    script = tmp / "bodies.lua"
    script.write_text(LUA)
    files = {}
    for name in ENDPOINTS:
        files[name] = tmp / f"{len(files)}.jsonl"
        files[name].write_text("\n".join(pools[name][1]) + "\n")

    def run(setup: str, base: str, c: int, seconds: float, name: str = "/score 1") -> Point:
        path, ours = pools[name][0], setup in SERVICE
        load(base, path, files[name], script, c, 1.0)  # warm-up
        wait_idle(base) if ours else time.sleep(1.0)  # a peer does not show its queue: a second
        seqs0, passes0, fwd0 = batch_totals(base) if ours else (0.0, 0.0, 0.0)
        r = load(base, path, files[name], script, c, seconds)
        wait_idle(base) if ours else time.sleep(1.0)
        seqs1, passes1, fwd1 = batch_totals(base) if ours else (0.0, 0.0, 0.0)
        answered = r["requests"] - r["status"]
        errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        passes = passes1 - passes0
        batch, forward_ms = ((seqs1 - seqs0) / passes, 1000 * (fwd1 - fwd0) / passes) if passes > 0 else (0.0, 0.0)
        rps = answered / (r["duration_us"] / 1e6)
        return Point(rps, r["p50_us"] / 1000, r["p99_us"] / 1000, errors, batch, forward_ms)

    sweep: list = []
    flags: dict[str, list[str]] = {}
    if "litserve" in args.peer_setups:
        if args.litserve_flags:
            flags["litserve"] = args.litserve_flags.split()
        else:
            flags["litserve"], sweep = sweep_litserve(args.model, run, args.sweep_seconds)
            if not flags["litserve"]:
                args.peer_setups.remove("litserve")
    measured: dict[tuple[str, str, int], Point] = {}
    missing = []
    threads = torch.get_num_threads()  # what the service's torch takes by default, here
    ceiling = Ceiling(args.model, args.data_dir, args.engine_sentences)
    for r in range(args.rounds):
        for setup in args.peer_setups if r % 2 == 0 else reversed(args.peer_setups):
            if setup in missing:
                continue
            try:
                proc, base = start(setup, args.model, flags.get(setup, ()))
            except RuntimeError as e:
                if setup in SERVICE:
                    raise
                missing.append(setup)
                print(f"warning: {setup} did not start ({e}); measuring without it", flush=True)
                continue
            now: dict[tuple[str, str, int], Point] = {}
            try:
                for name in args.endpoints:
                    for c in args.concurrency:
                        point = now[setup, name, c] = run(setup, base, c, args.seconds, name)
                        key = (setup, name, c)
                        if key not in measured or point.rps > measured[key].rps:
                            measured[key] = point
                        print(f"round {r + 1}  " + "  ".join(table_rows({key: point}, tokens)[0]), flush=True)
            finally:
                stop(proc)
            # The engine in process at this round's batches, now, while the machine is as the server found it.
            for (s, c, p), (n, t, b) in zip(engine_measured(now), engine_points(now, threads), strict=True):
                rate = ceiling.measure(s, [(n, t, b)])[n, t, b]
                print(
                    f"round {r + 1}  {s} in process  conc. {c}  {n} x batch {b} on {t} thread(s): {rate:,.0f} "
                    f"tokens/s, HTTP {p.rps * tokens['/score 1'] / rate:.0%} of it",
                    flush=True,
                )
    shutil.rmtree(tmp)
    # In the table's order: endpoint, concurrency, then setup.
    results = {
        (s, n, c): measured[(s, n, c)]
        for n in args.endpoints
        for c in args.concurrency
        for s in args.peer_setups
        if (s, n, c) in measured
    }

    engine = engine_rows(results, ceiling.figures(), tokens, threads)
    header = ["setup", "endpoint", "conc.", "answered/s", "tokens/s", "p50 ms", "p99 ms", "batch", "errors"]
    ratio_header, ratios = ratio_rows(results)
    body = (
        f"Closed loop, {args.seconds:g} s per point after a 1 s warm-up, wrk (2 threads) on the same cores; "
        f"each server alone, {args.rounds} rounds over the setups (every other one reversed), each point's best "
        "round shown. float32, one PTB test sentence (or "
        f"prefix, top_k 10) per request; mean predictions per `/score` request {tokens['/score 1']:.1f}. "
        "`lmserve`: the service's defaults (two forward lanes on a CPU of two or more threads); `lmserve-2w`: "
        "`LMSERVE_WORKERS=2 LMSERVE_THREADS=1`; `lmserve-1l`: `LMSERVE_FORWARD_LANES=1` (one batch at a time, on "
        f"every thread). Ray Serve: `{' '.join(RAY_FLAGS)}`."
        + (
            " `lmserve-bare`: the defaults with `POST /score` answered in the HTTP protocol itself "
            "(`benchmarks.instrumented --bare`: no ASGI app, no middleware, so no metrics, logs, limits or "
            "deadline): not a service, the bound of leaner HTTP handling."
            if "lmserve-bare" in args.peer_setups
            else ""
        )
        + (f" Did not start: {', '.join(missing)}." if missing else "")
        + "\n\n"
        + table(header, table_rows(results, tokens))
        + f"\n\nOurs ({', '.join(f'`{s}`' for s in OURS)}) against each:\n\n"
        + table(ratio_header, ratios)
    )
    if sweep:
        body += (
            "\n\nLitServe tuned in the same run (`/score` one sentence, concurrency 64, "
            f"{args.sweep_seconds:g} s each; the best, in bold, is the `litserve` above):\n\n"
            + table(["flags", "answered/s", "p50 ms", "p99 ms", "errors"], sweep)
        )
    if engine:
        body += (
            "\n\nHTTP against the in-process engine (`ModelRunner.run`, float32, PTB test sentences, the median of 3 "
            "passes over them; measured in every round right after the setup's HTTP points, at the batches the "
            "service formed there, the setup's best round kept, as for HTTP) at the mean "
            "batch the service formed at that concurrency, run as the setup runs it (`lmserve`: two batches at a "
            "time, one thread each, where the clients are enough to fill two, a lone one on the threads the other "
            "lane leaves, every thread on two cores; "
            "`lmserve-1l`: one batch, on every thread; `lmserve-2w`: like `lmserve`, but a lone "
            "batch also on one thread, its worker's), and one forward pass of such a batch "
            "in each (in the server, the mean of its `lmserve_batch_inference_duration_seconds` over the run):\n\n"
            + table(ENGINE_HEADER, engine)
        )
    lines = targets(results, engine)
    if lines:
        body += "\n\nTargets:\n\n" + "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("peers", "Against other serving frameworks", body)
