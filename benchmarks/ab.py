"""The server of an earlier commit against the working tree's, over HTTP, in one run with the two alternated.

    python -m benchmarks.ab 13b6e0b                              # /score one sentence at 1, 8 and 64 clients
    python -m benchmarks.ab HEAD~3 --endpoint /next-word --concurrency 1 --rounds 5
    python -m benchmarks.ab HEAD~3 --concurrency 8 --env LMSERVE_FORWARD_LANES=1
    python -m benchmarks.ab --bare                               # the service against /score without the framework
    python -m benchmarks.ab --setting LMSERVE_LOG_LEVEL=info     # the working tree with a setting against without

The earlier commit is checked out in a temporary git worktree (its own code and bundled model); each round
starts each server as a user does (`python -m service`, the same settings and `--env` for both), drives it with
the closed loop of `benchmarks.http_load` (wrk where installed, its requests: one PTB test sentence per `/score`,
or a prefix of one with top_k 10 per `/next-word`) at each concurrency after a 1 s warm-up, and stops it; the
order of the two is reversed every other round. Printed: each round's requests/s, p50, the mean forward pass
the server timed (`lmserve_batch_inference_duration_seconds`) and the CPU milliseconds its event loop (the main
thread) spent per answered request (`benchmarks.profile_server --cpu`'s measure: what the HTTP layer costs, less
noisy on a shared machine than requests/s), then the medians over the rounds and their ratio.
It writes nothing into the docs: a change's row in docs/benchmarks.md quotes it with its command.

`--bare` (no commit): the working tree's service against the same server with `/score` answered in the HTTP
protocol itself (`benchmarks.instrumented --bare`: no ASGI app, no middleware): what the HTTP framework and the
service's per-request machinery cost, an upper bound on what leaner handling could gain. `--setting NAME=VALUE`
(no commit): the working tree's service with those settings against it without (servers are started at log level
`warning`, as every benchmark starts them, unless a setting names LMSERVE_LOG_LEVEL).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import DEFAULT_DATA_DIR, REPO, machine, start_server, stop_server, table
from benchmarks.http_load import LUA, batch_totals, body_pools, load, wait_idle
from benchmarks.profile_server import cpu_per_request


def measure(
    server: tuple[Path, tuple[str, ...], dict[str, str]],
    env: dict[str, str],
    path: str,
    bodies: Path,
    script: Path,
    conc: int,
    seconds: float,
) -> dict:
    """One server (`server`: its checkout, the module it runs, its own settings over `env`), one closed-loop point
    at `path`: requests/s, p50 ms, forward ms, mean batch, and the event loop's CPU ms per answered request."""
    repo, module, own = server
    proc, base = start_server([], {**env, **own}, cwd=repo, module=module)
    try:
        load(base, path, bodies, script, conc, 1)  # warm-up
        wait_idle(base)
        s0, n0, t0 = batch_totals(base)
        out, cpu = cpu_per_request(proc.pid, lambda: load(base, path, bodies, script, conc, seconds))
        s1, n1, t1 = batch_totals(base)
    finally:
        stop_server(proc)
    passes = max(1.0, n1 - n0)
    return {
        "rps": out["requests"] / (out["duration_us"] / 1e6),
        "p50": out["p50_us"] / 1000,
        "forward": 1000 * (t1 - t0) / passes,
        "batch": (s1 - s0) / passes,
        "loop": cpu["event loop"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", nargs="?", help="the earlier commit (any git revision)")
    p.add_argument(
        "--bare",
        action="store_true",
        help="instead of an earlier commit: the working tree's /score without the HTTP framework "
        "(benchmarks.instrumented --bare)",
    )
    p.add_argument(
        "--setting",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="instead of an earlier commit: the working tree with these settings against it without",
    )
    p.add_argument("--endpoint", default="/score 1", choices=["/score 1", "/next-word"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="settings for both servers")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = p.parse_args(argv)
    if sum((args.before is not None, args.bare, bool(args.setting))) != 1:
        p.error("give one of: an earlier commit, --bare, --setting")
    if args.bare and args.endpoint != "/score 1":
        p.error("--bare answers /score only")
    env = dict(e.split("=", 1) for e in args.env)

    path, bodies, _ = body_pools(args.data_dir)[args.endpoint]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies_file, script = work / "bodies.jsonl", work / "script.lua"
        bodies_file.write_text("\n".join(bodies) + "\n", encoding="utf-8")
        script.write_text(LUA, encoding="utf-8")
        service = ("service",)
        if args.bare:
            first, second = "service (working tree)", "bare /score (working tree)"
            servers = {first: (REPO, service, {}), second: (REPO, ("benchmarks.instrumented", "--bare"), {})}
        elif args.setting:
            first, second = "service (working tree)", f"with {' '.join(args.setting)} (working tree)"
            own = dict(e.split("=", 1) for e in args.setting)
            servers = {first: (REPO, service, {}), second: (REPO, service, own)}
        else:
            rev = subprocess.run(
                ["git", "rev-parse", "--short", args.before], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
            before = work / "before"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), rev], cwd=REPO, check=True)
            first, second = f"before ({rev})", "after (working tree)"
            servers = {first: (before, service, {}), second: (REPO, service, {})}
        try:
            seen: dict[tuple[str, int], list[dict]] = {(s, c): [] for s in servers for c in args.concurrency}
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for conc in args.concurrency:
                    for name in order:
                        point = measure(servers[name], env, path, bodies_file, script, conc, args.seconds)
                        seen[name, conc].append(point)
                        print(
                            f"round {r + 1}  c = {conc}  {name}: {point['rps']:.1f} req/s, p50 {point['p50']:.1f} ms, "
                            f"forward {point['forward']:.2f} ms (batch {point['batch']:.1f}), "
                            f"event loop {point['loop']:.3f} CPU ms a request",
                            flush=True,
                        )
        finally:
            if args.before is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)

    rows = []
    for conc in args.concurrency:
        keys = ("rps", "p50", "forward", "loop")
        med = {s: {k: statistics.median(x[k] for x in seen[s, conc]) for k in keys} for s in servers}
        b, a = med[first], med[second]
        rows.append(
            [
                str(conc),
                f"{b['rps']:.1f}",
                f"{a['rps']:.1f}",
                f"{a['rps'] / b['rps']:.2f}x",
                f"{b['p50']:.1f} / {a['p50']:.1f}",
                f"{b['forward']:.2f} / {a['forward']:.2f}",
                f"{b['loop']:.3f} / {a['loop']:.3f}",
            ]
        )
    settings = " ".join(args.env) or "the defaults"
    print(
        f"\n{machine()}; {args.endpoint} (as benchmarks.http_load sends it), {settings}; medians of {args.rounds} "
        f"alternated rounds of {args.seconds:g} s:\n"
    )
    header = [
        "conc.",
        f"{first} req/s",
        f"{second.removesuffix(' (working tree)')} req/s",
        "after / before" if args.before is not None else "second / first",
        "p50 ms",
        "forward ms",
        "event loop CPU ms / request",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
