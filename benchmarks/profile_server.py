"""Where a loaded server's time goes: py-spy samples of the event-loop thread and the forward-pass thread.

    python -m benchmarks.profile_server                          # /score, one sentence, concurrency 64, 15 s
    python -m benchmarks.profile_server --endpoint /next-word --seconds 5
    python -m benchmarks.profile_server --cpu                    # CPU per request by thread, no sampling
    python -m benchmarks.profile_server --stages                 # one client's requests, stage by stage

The server is started as a user starts it; wrk drives it closed-loop (the HTTP load benchmark's requests) while
`py-spy record --threads --idle` samples every thread. A thread is busy in a sample unless it sits where it
waits for work (the event loop in uvloop's poll, the forward thread on its executor queue). For each busy
thread: its share of the samples, and the functions on its stack in the most of its busy samples (inclusive).
A sample is taken whether or not the thread holds the GIL, so time spent waiting for the GIL shows at the line
where the thread gave it up. Needs py-spy (the `bench` extra) and the right to trace the server (root, or
ptrace allowed).

py-spy stops the server for each sample. `--cpu` samples nothing: it reads each thread's CPU time (user +
system) from Linux's /proc before and after the run, and prints the CPU milliseconds per answered request of
the event-loop thread (the main thread), of all the server's other threads together (the forward pass, its
OpenMP team, worker threads) and of wrk, which shares the machine. The server inherits the environment
(`LMSERVE_FORWARD_LANES=1 python -m benchmarks.profile_server --cpu`); the forward lanes it ran are printed as
its `/model` reports them.

`--stages` samples nothing either: the server is `benchmarks.instrumented --stages`, which notes when each step
of a request happens, and one client (wrk, closed loop) drives it; printed: the median milliseconds of each stage
of a request's cycle, from its bytes reaching the server to the next request's (the event loop's parts, the two
thread hand-offs around the pass, the pass, the client's turn).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from benchmarks.common import DEFAULT_DATA_DIR, command_line, machine, start_server, stop_server, table
from benchmarks.http_load import LUA, body_pools, wrk
from benchmarks.instrumented import stage_medians

# Leaf frames of a thread that waits for work, not does it.
IDLE_LEAVES = ("Runner.run (asyncio/runners.py", "_worker (concurrent/futures/thread.py")


def summarise(raw: str, top: int = 25) -> str:
    """py-spy's raw (collapsed) output -> per thread: busy share, and the top inclusive functions."""
    total: collections.Counter[str] = collections.Counter()
    busy: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        head, *frames = stack.split(";")
        thread = re.sub(r"_\d+$", "", head.split(": ", 1)[-1])  # "thread (123): lm-forward_0" -> lm-forward
        total[thread] += int(count)
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        busy[thread] += int(count)
        for function in dict.fromkeys(f.rsplit(":", 1)[0] + ")" for f in frames):  # file without the line
            inclusive[thread][function] += int(count)
    lines = []
    for thread, n in busy.most_common():
        lines.append(f"{thread}: busy in {n / total[thread]:.0%} of {total[thread]} samples")
        shared = [f for f, c in inclusive[thread].items() if c == n]  # on every busy stack: says nothing
        for function, c in inclusive[thread].most_common(top + len(shared)):
            if function not in shared:
                lines.append(f"  {c / n:6.1%}  {function}")
    return "\n".join(lines)


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a /proc `stat` file (of a process: all its threads, ended ones included;
    of a thread: its own)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU of the machine so far, from /proc/stat (idle and iowait are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was busy between two `machine_ticks()`."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def answered_per_second(result: dict) -> float:
    """A wrk run's answered requests (not the non-2xx) a second, from its result fields."""
    return (result["requests"] - result["status"]) / (result["duration_us"] / 1e6)


def cpu_per_request(pid: int, run) -> tuple[dict, dict[str, float]]:
    """`run()` (a wrk run: its result fields), and the CPU ms per answered request it cost process `pid`'s
    main thread (the server's event loop), its other threads, and the children of this process (wrk); with
    `machine busy`, the share of the whole machine's CPU time that was busy meanwhile (what the server and wrk
    left idle: threads waiting, not computing)."""
    process, main = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/task/{pid}/stat")
    before = cpu_seconds(process), cpu_seconds(main), resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = machine_ticks()
    result = run()
    busy = busy_share(ticks, machine_ticks())
    after = cpu_seconds(process), cpu_seconds(main), resource.getrusage(resource.RUSAGE_CHILDREN)
    answered = max(1, result["requests"] - result["status"])
    loop = after[1] - before[1]
    per = {
        "event loop": loop,
        "other threads": after[0] - before[0] - loop,
        "wrk": (after[2].ru_utime + after[2].ru_stime) - (before[2].ru_utime + before[2].ru_stime),
    }
    return result, {**{k: 1000 * v / answered for k, v in per.items()}, "machine busy": busy}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default="/score 1", choices=["/score 1", "/score 32", "/next-word", "/healthz"])
    p.add_argument("--concurrency", type=int, default=None, help="clients (default 64; 1 with --stages)")
    p.add_argument("--seconds", type=float, default=15.0, help="sampled seconds (wrk runs 5 s longer)")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--raw", type=Path, default=None, help="also keep py-spy's raw output here")
    p.add_argument("--cpu", action="store_true", help="CPU per request by thread from /proc instead of py-spy")
    p.add_argument("--stages", action="store_true", help="one client's requests timed stage by stage, no py-spy")
    args = p.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = 1 if args.stages else 64
    if args.cpu:
        cpu_main(args)
        return
    if args.stages:
        stages_main(args)
        return
    spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    if not Path(spy).exists() or shutil.which("wrk") is None:
        raise SystemExit("needs py-spy (pip install -e '.[bench]') and wrk (apt-get install wrk)")
    with loaded_server(args) as (pid, drive, lanes):
        load = threading.Thread(target=drive, args=(args.seconds + 5,))
        load.start()
        with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
            raw = Path(tmp) / "raw.txt"
            cmd = [spy, "record", "-p", str(pid), "--threads", "--idle", "--rate", str(args.rate)]
            cmd += ["--duration", f"{args.seconds:g}", "--format", "raw", "-o", str(raw)]
            subprocess.run(cmd, check=True, capture_output=True)
            text = raw.read_text()
        load.join()
    if args.raw:
        args.raw.write_text(text)
    where = f"{args.endpoint}, concurrency {args.concurrency}, {lanes} forward lanes"
    print(f"{where}, {args.seconds:g} s at {args.rate} samples/s:")
    print(summarise(text))


@contextlib.contextmanager
def loaded_server(
    args: argparse.Namespace, module: tuple[str, ...] = ("service",)
) -> Iterator[tuple[int, Callable[[float], dict], int]]:
    """A server started as a user starts it (or `module` with the service's flags) and warmed up with 2 s of the
    load: (its pid, `drive(seconds)`, which runs wrk with `args.endpoint`'s bodies at `args.concurrency` and
    returns its result fields, the forward lanes it runs, as its `/model` says)."""
    path, bodies, _ = body_pools(args.data_dir)[args.endpoint]
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        script, pool = Path(tmp) / "bodies.lua", Path(tmp) / "bodies.jsonl"
        script.write_text(LUA)
        pool.write_text("\n".join(bodies) + "\n")
        proc, base = start_server(module=module)
        try:

            def drive(seconds: float) -> dict:  # (/healthz: a GET, no bodies)
                return wrk(base, path, pool if bodies else None, script, args.concurrency, seconds)

            drive(2.0)  # warm-up
            yield proc.pid, drive, httpx.get(base + "/model", timeout=10).json()["forward_lanes"]
        finally:
            stop_server(proc)


def cpu_main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    with loaded_server(args) as (pid, drive, lanes):
        result, per = cpu_per_request(pid, lambda: drive(args.seconds))
    rate = answered_per_second(result)
    print(f"{machine()}; `{command_line()}`; forward lanes {lanes}")
    busy = per.pop("machine busy")
    cost = ", ".join(f"{name} {ms:.3f}" for name, ms in per.items())
    print(f"{args.endpoint}, concurrency {args.concurrency}, {args.seconds:g} s: {rate:,.0f} answered/s")
    print(f"CPU ms per answered request: {cost}")
    print(f"the machine's {os.cpu_count()} CPUs busy {busy:.0%} of the time (the rest idle)")


STAGE_ROWS = [
    ("queued", "request in -> its jobs queued (parsing, middleware, validation, encoding)", "event loop"),
    ("pass", "queued -> a lane's thread starts the pass", "hand-off"),
    ("passed", "the forward pass", "lane"),
    ("results", "pass over -> the request's task has the results", "hand-off"),
    ("built", "results -> the JSON answer built", "event loop"),
    ("sent", "answer built -> sent (response, middleware, the socket's write)", "event loop"),
    ("client", "sent -> the next request in (the client's turn, the kernel)", "wrk"),
]


def stages_main(args: argparse.Namespace) -> None:
    """`--stages`: the median time of each stage of one client's requests (`benchmarks.instrumented --stages`)."""
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    if args.concurrency != 1:
        raise SystemExit("--stages times one client's requests: --concurrency 1")
    with tempfile.TemporaryDirectory(prefix="stages-") as tmp:
        notes_file = Path(tmp) / "stages.json"
        with loaded_server(args, ("benchmarks.instrumented", "--stages", str(notes_file))) as (pid, drive, _):
            # The notes are the server's time.perf_counter(): Linux's CLOCK_MONOTONIC, this process's clock too.
            start = time.perf_counter()
            result = drive(args.seconds)
            os.kill(pid, signal.SIGUSR1)  # the server writes its notes and exits
            for _ in range(200):
                if notes_file.exists() and notes_file.stat().st_size:
                    break
                time.sleep(0.05)
        notes = [(stage, t) for stage, t in json.loads(notes_file.read_text()) if t >= start]
    ms = stage_medians(notes)
    rate = answered_per_second(result)
    rows = [[what, who, f"{ms[stage]:.3f}"] for stage, what, who in STAGE_ROWS]
    rows.append(["the whole cycle (request in -> the next in)", "", f"{ms['cycle']:.3f}"])
    print(f"{machine()}; `{command_line()}`")
    print(f"{args.endpoint}, one client, {args.seconds:g} s: {rate:,.0f} answered/s; median ms of each stage:\n")
    print(table(["stage", "where", "ms"], rows))
    rest = ms["cycle"] - ms["passed"]
    print(
        f"\nThe forward pass is {ms['passed'] / ms['cycle']:.0%} of a cycle; the rest {rest:.3f} ms. After the answer "
        f"has gone, the request observer (metrics, access log) takes {ms['observed']:.3f} ms, beside the client's turn."
    )


if __name__ == "__main__":
    main()
