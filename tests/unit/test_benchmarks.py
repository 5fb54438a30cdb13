"""The benchmark scripts: their arithmetic and report writing, and a smoke run of each at the smallest size.

The figures themselves are not asserted (speed is the benchmarks' job, not the tests'); what is asserted is that
each script runs end to end on the real code paths and prints a table with a number in every cell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common
from lm.model import native_bf16

REPO = Path(__file__).resolve().parents[2]


def test_flop_counts_are_the_matmuls_of_the_model() -> None:
    # Zaremba small: 2 layers of 4 gates over [200 input; 200 hidden], and a 200 x 10,000 decoder.
    assert common.lstm_forward_flops(10000, 200, 200, 2) == 2 * (2 * 4 * 200 * 400) + 2 * 200 * 10000
    assert common.lstm_forward_flops(10, 3, 5, 1) == 2 * 4 * 5 * 8 + 2 * 5 * 10
    assert common.training_flops(10, 3, 5, 1) == 3 * common.lstm_forward_flops(10, 3, 5, 1)


def test_a_section_is_replaced_in_place_and_others_are_kept(tmp_path, monkeypatch) -> None:
    report = tmp_path / "benchmarks.md"
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "engine.py"), "--repeats", "1"])
    common.write_section("engine", "Engine", "first", report)
    common.write_section("http", "HTTP", "other", report)
    common.write_section("engine", "Engine", "second", report)
    text = report.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("second") < text.index("other")  # replaced where it was
    assert text.count("<!-- begin engine -->") == 1
    assert "Command: `python -m benchmarks.engine --repeats 1`" in text


def test_the_matmul_ceiling_is_a_positive_rate() -> None:
    assert common.matmul_gflops(64, 32, 64, common.DTYPES["fp32"], repeats=2) > 0


def run(*args: str, timeout: int = 600, writes: bool = True) -> str:
    """The benchmark's output; one that `writes` its section of docs/benchmarks.md is told not to."""
    cmd = [sys.executable, "-m", *args, *(["--no-write"] if writes else [])]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(out: str) -> list[list[str]]:
    """The rows of the first Markdown table printed, without its header."""
    rows: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]


def test_training_benchmark_runs_both_loops() -> None:
    out = run("benchmarks.training", "--configs", "small", "--dtypes", "fp32", "--rounds", "1", "--steps", "2")
    (row,) = table_rows(out)
    assert row[:2] == ["small", "fp32"]
    assert all(re.search(r"\d", cell) for cell in row[2:])


def test_engine_benchmark_runs_every_batch_size_and_the_type_ahead() -> None:
    out = run(
        "benchmarks.engine", "--device", "cpu",
        "--batches", "1", "4", "--sentences", "8", "--repeats", "1", "--type-ahead-sentences", "1",
    )  # fmt: skip
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "4"]
    # bf16 is compared with fp32 only where the CPU runs bf16 natively (elsewhere it would time emulation).
    assert ("largest difference" in out) is native_bf16("cpu") and "without the prefix-state cache" in out
    assert "| prefix tokens | no cache ms | cache ms | speed-up |" in out


@pytest.mark.parametrize("loader", ["wrk", "python"])
def test_http_benchmark_drives_a_real_server(loader: str) -> None:
    if loader == "wrk" and shutil.which("wrk") is None:
        pytest.skip("needs wrk (apt-get install wrk); .ci/run installs it")
    out = run(
        "benchmarks.http_load", "--load", loader, "--device", "cpu",
        "--seconds", "1", "--concurrency", "2", "--setups", "batching", "--endpoints", "/healthz", "/score 1",
    )  # fmt: skip
    rows = table_rows(out)
    assert [r[1] for r in rows] == ["/healthz", "/score 1"]
    for row in rows:
        assert float(row[3].replace(",", "")) > 0  # requests/s
        assert row[-2:] == ["0", "0"]  # no 429, no errors
    assert float(rows[0][8]) == 0 and float(rows[1][8]) >= 1  # mean batch: /healthz runs no model


def test_python_load_generator_counts_answers_and_429s_over_several_processes() -> None:
    """Against a stub HTTP server that answers 429 to every other body: both kinds counted, merged over 2 processes."""
    import http.server
    import threading

    from benchmarks import loadgen

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            n = int(self.headers["Content-Length"])
            self.rfile.read(n)
            body = b'{"ok": true}'
            self.send_response(200 if n % 2 else 429)  # '{"a": 1}' (8 bytes) is refused, '{"a": 12}' answered
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/score"
        r = loadgen.run(url, ['{"a": 1}', '{"a": 12}'], connections=4, seconds=1.0, processes=2)
    finally:
        server.shutdown()
    assert r["requests"] > 0 and 0 < r["busy"] < r["requests"]
    assert r["status"] == r["busy"]  # the only non-2xx answers are the 429s
    assert r["connect"] == r["read"] == r["write"] == r["timeout"] == 0
    assert 0 < r["p50_us"] <= r["p95_us"] <= r["p99_us"]


def test_generation_benchmark_runs_in_process_and_over_http() -> None:
    out = run("benchmarks.generation", "--streams", "1", "2", "--words", "3", "--repeats", "1")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2"]
    for row in rows:
        assert float(row[1].replace(",", "")) > 0 and float(row[2].replace(",", "")) > 0  # in process, over HTTP
    assert "| streams | words 1-1 ms | words 3-3 ms | ratio |" in out


def test_http_load_hands_peers_flags_to_the_comparison(monkeypatch) -> None:
    from benchmarks import http_load
    from benchmarks.peers import compare

    seen = []
    monkeypatch.setattr(compare, "main", seen.append)
    http_load.main(["--peers", "--seconds", "2", "--peer-setups", "lmserve", "litserve"])
    assert seen == [["--seconds", "2", "--peer-setups", "lmserve", "litserve"]]


def test_peer_comparison_takes_ratios_and_targets_within_the_run() -> None:
    from benchmarks.peers.compare import (
        Point,
        command,
        engine_point,
        engine_points,
        engine_rows,
        environment,
        ratio,
        ratio_rows,
        targets,
    )

    results = {
        ("lmserve", "/score 1", 64): Point(600, 50, 150, 0, batch=31.6, forward_ms=60.0),
        ("litserve", "/score 1", 64): Point(200, 300, 400, 0),
        ("ray-serve", "/score 1", 64): Point(300, 250, 120, 0),
        ("lmserve", "/next-word", 64): Point(900, 40, 90, 0, batch=50.0),
        ("litserve", "/next-word", 64): Point(500, 100, 200, 0),
    }
    header, rows = ratio_rows(results)
    assert header[:5] == ["ours", "endpoint", "conc.", "/ litserve", "/ ray-serve"]
    assert rows[0][:5] == ["lmserve", "/score 1", "64", "3.00x", "2.00x"]
    assert rows[1][:5] == ["lmserve", "/next-word", "64", "1.80x", ""]  # ray-serve did not run that point
    assert ratio(5, 0) == "-"  # a peer that answered nothing: no ratio, no crash
    results[("lmserve-1l", "/score 1", 64)] = Point(450, 60, 170, 0, batch=15.2, forward_ms=70.0)
    # The engine rows: each setup against the engine in process run with its own lanes, at its own batch: the
    # defaults are two lanes on a CPU of two threads, one thread each; one lane runs on both.
    assert engine_points(results, 2) == [(2, 1, 32), (1, 2, 15)]
    # Passes side by side only as many as the clients can fill: one client's pass runs alone, on every thread.
    assert [engine_point("lmserve", c, b, 2) for c, b in [(1, 1.0), (8, 3.1), (8, 5.0), (64, 40.0)]] == [
        (1, 2, 1),
        (2, 1, 3),
        (1, 2, 5),
        (1, 2, 40),
    ]
    # Two workers of one thread each: two passes at a time where the clients fill two, every pass on one thread.
    assert [engine_point("lmserve-2w", c, b, 2) for c, b in [(1, 1.0), (64, 15.6)]] == [(1, 1, 1), (2, 1, 16)]
    assert engine_point("lmserve", 64, 31.6, 4) == (2, 2, 32)  # four threads: two lanes of two
    assert engine_point("lmserve", 64, 31.6, 1) == (1, 1, 32)  # one thread: one lane
    assert engine_point("lmserve-1l", 64, 31.6, 4) == (1, 4, 32)
    # A lone pass on four threads runs as the service runs it: on the 3 the other lane's team leaves; one lane: 4.
    assert engine_point("lmserve", 1, 1.0, 4) == (1, 3, 1)
    assert engine_point("lmserve-1l", 1, 1.0, 4) == (1, 4, 1)
    # The servers themselves: the defaults, whatever the caller's environment says of what a setup describes;
    # two workers of one thread each (one lane each, the service's choice); one lane.
    cmd, env = command("lmserve", 8000, "m")
    assert "--workers" not in cmd and env == {}
    caller = {"LMSERVE_FORWARD_LANES": "4", "LMSERVE_THREADS": "3", "PATH": "/bin"}
    assert environment("lmserve", env, caller) == {"PATH": "/bin"}
    assert environment("litserve", {}, caller) == caller
    cmd, env = command("lmserve-2w", 8000, "m")
    assert cmd[cmd.index("--workers") + 1] == "2" and env == {"LMSERVE_THREADS": "1"}
    assert environment("lmserve-2w", env, caller) == {"LMSERVE_THREADS": "1", "PATH": "/bin"}
    cmd, env = command("lmserve-1l", 8000, "m")
    assert "--workers" not in cmd and env == {"LMSERVE_FORWARD_LANES": "1"}
    # Each setup's own in-process measurements (a point another setup shares is that setup's, not this one's).
    inproc = {
        ("lmserve", 2, 1, 32): (15000.0, 42.0),
        ("lmserve-1l", 1, 2, 15): (12000.0, 50.0),
        ("lmserve", 1, 2, 15): (99000.0, 5.0),
    }
    engine = engine_rows(results, inproc, {"/score 1": 20.0, "/next-word": 1.0}, 2)
    assert engine == [
        ["lmserve", "64", "31.6", "12,000", "15,000", "80%", "60.0", "42.0"],
        ["lmserve-1l", "64", "15.2", "9,000", "12,000", "75%", "70.0", "50.0"],
    ]
    del results[("lmserve-1l", "/score 1", 64)]
    lines = targets(results, engine)
    # 2.00x the best peer (ray-serve) but its p99 is lower than ours: not met; /next-word 1.80x: met; 80%: met.
    assert "ray-serve's 300" in lines[0] and "2.00x, **not met**" in lines[0]
    assert "1.80x, **met**" in lines[1] and "lmserve: HTTP" in lines[2] and "80%, **met**" in lines[2]
    assert "lmserve-1l: HTTP" in lines[3] and "75%, **not met**" in lines[3]
    results[("ray-serve", "/score 1", 64)] = Point(300, 250, 200, 0)
    assert "2.00x, **met**" in targets(results, engine)[0]
    # Each of our setups is held to the targets against the same best peer.
    results[("lmserve-2w", "/score 1", 64)] = Point(900, 40, 100, 0, batch=20.0)
    lines = targets(results, engine)
    assert "lmserve-2w >= 1.5x" in lines[1] and "3.00x, **met**" in lines[1]
    header, rows = ratio_rows(results)
    assert [r[0] for r in rows] == ["lmserve", "lmserve", "lmserve-2w"] and "/ lmserve-2w" not in header


def test_the_peers_answer_our_request_with_our_numbers() -> None:
    # One request, as wrk sends it, to the service and to a peer's request/response code: the fields the peer
    # answers are ours, with our values (float32 both sides; the peer pads a batch, so not bit for bit).
    pytest.importorskip("litserve", reason="the peers are in the peers extra: pip install -e '.[peers]'")
    from fastapi.testclient import TestClient

    from benchmarks.peers.litserve_server import NextWordAPI, ScoreAPI
    from benchmarks.peers.plain_torch import PlainTorchModel
    from service.app import create_app
    from service.settings import Settings

    model_dir = REPO / "models" / "ptb-cpu"
    with TestClient(create_app(Settings(model=model_dir, device="cpu"))) as client:
        _compare_with_peer(client, model_dir, ScoreAPI, NextWordAPI, PlainTorchModel)


def _compare_with_peer(client, model_dir: Path, ScoreAPI, NextWordAPI, PlainTorchModel) -> None:
    body = {"text": "the company said its sales rose"}
    ours = client.post("/score", json=body).json()
    api = ScoreAPI(str(model_dir), None)
    api.lm = PlainTorchModel(model_dir)
    (out,) = api.predict([api.decode_request(body)])
    theirs = api.encode_response(out)
    assert theirs.keys() == ours.keys() and theirs["model"] == ours["model"]
    for key, value in theirs["results"][0].items():
        expected = pytest.approx(value, rel=1e-5) if isinstance(value, float) else value
        assert ours["results"][0][key] == expected, key

    body = {"prefix": "the company said", "top_k": 3}
    ours = client.post("/next-word", json=body).json()
    api = NextWordAPI(str(model_dir), None)
    api.lm = PlainTorchModel(model_dir)
    (out,) = api.predict([api.decode_request(body)])
    theirs = api.encode_response(out)
    top = [(w["word"], w["logprob"]) for w in theirs["results"][0]["top_k"]]
    assert [(w["word"], pytest.approx(w["logprob"], rel=1e-5)) for w in ours["results"][0]["top_k"]] == top
    assert theirs["results"][0]["tokens"] == ours["results"][0]["tokens"]


def test_bf16_accuracy_compares_every_prediction() -> None:
    out = run("benchmarks.bf16_accuracy", "--sentences", "10")
    (row,) = table_rows(out)
    assert row[0] == "sentences (as /score)"
    assert float(row[5]) >= 0  # max diff
    assert "bf16 m" in out  # the verdict, either way


def test_openmp_teams_counts_a_second_team_beside_the_passes() -> None:
    """The benchmark's two set-ups are what they say: with the main thread on one torch thread, the pass's thread
    leads the only team (one worker for two threads); with a parallel operation run in the main thread first,
    a second team stays beside it."""
    out = run("benchmarks.openmp_teams", "--threads", "2", "--sentences", "3", "--rounds", "1")
    rows = {r[0]: r for r in table_rows(out)}
    assert set(rows) == {"one team", "two teams"}
    assert int(rows["one team"][3]) == 1 and int(rows["two teams"][3]) >= 2
    assert all(float(r[1]) > 0 for r in rows.values())
    assert "A second team in the process makes a pass" in out


def test_ab_runs_an_earlier_commits_server_against_the_working_trees() -> None:
    """Both servers answer (an earlier commit's from a worktree of its own), and the worktree is gone after."""
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    out = run("benchmarks.ab", "HEAD", "--concurrency", "1", "--rounds", "1", "--seconds", "1", writes=False)
    (row,) = table_rows(out)
    assert row[0] == "1" and float(row[1]) > 0 and float(row[2]) > 0
    assert all(float(ms) > 0 for ms in row[6].split(" / "))  # each event loop's CPU per request
    assert re.search(r"round 1  c = 1  before \(\w+\): [\d.]+ req/s", out)
    assert "round 1  c = 1  after (working tree)" in out
    assert subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout == worktrees


def test_scaling_benchmark_times_lengths_and_compositions() -> None:
    out = run("benchmarks.scaling", "--lengths", "1", "8", "--repeats", "1", "--short", "2", "--long", "8")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "8"]
    assert all(float(r[1]) > 0 for r in rows)
    assert "| mixed (16 + 16) |" in out


def test_the_profile_summary_counts_busy_samples_per_thread() -> None:
    from benchmarks.profile_server import summarise

    raw = (
        "thread (1): MainThread;main (a.py:1);Runner.run (asyncio/runners.py:118) 6\n"
        "thread (1): MainThread;main (a.py:1);Runner.run (asyncio/runners.py:118);send (b.py:9) 3\n"
        "thread (1): MainThread;main (a.py:1);Runner.run (asyncio/runners.py:118);parse (c.py:4) 1\n"
        "thread (2): lm-forward_0;_worker (concurrent/futures/thread.py:81) 5\n"
        "thread (2): lm-forward_0;_worker (concurrent/futures/thread.py:81);forward (m.py:3) 5\n"
    )
    out = summarise(raw)
    assert "MainThread: busy in 40% of 10 samples" in out and "lm-forward: busy in 50% of 10 samples" in out
    assert "75.0%  send (b.py)" in out and "25.0%  parse (c.py)" in out
    assert "main (a.py)" not in out  # on every busy stack


def test_cpu_per_request_splits_the_event_loop_thread_from_the_others() -> None:
    import os
    import threading
    import time

    from benchmarks.profile_server import cpu_per_request

    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def run() -> dict:
        burn(0.3)  # in the main thread: the "event loop" of this process
        worker = threading.Thread(target=burn, args=(0.6,))
        worker.start()
        worker.join()
        return {"requests": 12, "status": 2}  # 10 answered

    result, per = cpu_per_request(os.getpid(), run)
    assert result["requests"] == 12
    assert 25 <= per["event loop"] <= 45  # 0.3 s over 10 answered requests: 30 ms (clock ticks of 10 ms)
    assert 55 <= per["other threads"] <= 80 and per["wrk"] < 5
    assert 0 < per["machine busy"] <= 1  # the whole machine's busy share meanwhile


def test_the_machines_busy_share_counts_idle_and_iowait_as_not_busy() -> None:
    from benchmarks.profile_server import busy_share, machine_ticks

    assert busy_share((10, 100), (60, 200)) == 0.5
    busy, total = machine_ticks()
    assert 0 < busy < total


def test_the_machine_line_names_the_vector_instructions() -> None:
    from benchmarks.common import vector_isa

    assert vector_isa({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512 with native bf16"
    assert vector_isa({"avx2", "avx512f", "amx_bf16"}) == "AVX-512 with native bf16 (AMX)"
    assert vector_isa({"avx2", "avx512f"}) == "AVX-512, no native bf16"
    assert vector_isa({"avx2"}) == "AVX2, no AVX-512"


@pytest.mark.parametrize("gc_mode", [False, True])
def test_loop_cost_measures_the_http_layer_and_the_collector(gc_mode: bool) -> None:
    flags = ["--endpoints", "/score", "--requests", "80", "--rounds", "2", "--concurrency", "8"]
    out = run("benchmarks.loop_cost", *flags, *(["--gc"] if gc_mode else []), writes=False)  # it only prints
    rows = table_rows(out)
    if gc_mode:
        assert [r[1] for r in rows] == ["Python's defaults", "steady heap (the service's)"]
        for r in rows:
            assert float(r[2]) > 0 and len(r[3].split(" / ")) == 3
            assert float(r[4]) >= 0 and float(r[5]) >= 0
    else:
        ((endpoint, plain, lane, saved),) = rows
        assert endpoint == "/score" and float(plain.replace(",", "")) > 0 and float(lane.replace(",", "")) > 0
        assert saved.endswith("x")


def test_lanes_in_process_run_the_same_number_of_full_batches() -> None:
    """Side by side, every lane runs as many full batches as the others: a lane left with one more batch (or
    a short last one) would run it alone at the end and lower the rate of lanes side by side."""
    from benchmarks.engine import throughput

    ran: list[tuple[int, int]] = []

    class Runner:
        def lane_width(self, wide: bool) -> None:
            pass

        def run(self, jobs):
            ran.append((0, len(jobs)))
            return [None] * len(jobs)

    seqs = [[0, 1, 2]] * 11  # batches of 2: five full ones and a short one
    assert throughput(Runner(), seqs, 2, repeats=1, lanes=2) > 0
    # After one warm-up batch in each lane: four full batches, two for each lane (every other one), not five and
    # the short one.
    assert [n for _, n in ran[2:]] == [2, 2, 2, 2]
    ran.clear()
    throughput(Runner(), seqs, 2, repeats=1)  # one lane: every sentence, the short batch too
    assert [n for _, n in ran[1:]] == [2, 2, 2, 2, 2, 1]


def test_the_in_process_ceiling_measures_each_point_and_leaves_the_threads_as_they_were() -> None:
    import torch

    from benchmarks.peers.compare import Ceiling

    threads = torch.get_num_threads()
    points = [(1, threads, 4), (2, 1, 4), (1, 1, 2)]
    ceiling = Ceiling(str(REPO / "models" / "ptb-cpu"), common.DEFAULT_DATA_DIR, 16)
    for _ in range(2):
        ceiling.measure("a", points)
    ceiling.measure("b", points[:1])  # another setup's measurement of a point both run: its own best
    out = ceiling.figures()
    assert sorted(out) == sorted([("a", *p) for p in points] + [("b", *points[0])])
    assert all(rate > 0 and ms > 0 for rate, ms in out.values())
    assert torch.get_num_threads() == threads


def test_the_ceiling_is_measured_after_each_setups_http_points_in_every_round(monkeypatch, capsys) -> None:
    """The engine in process is measured right after each of our setups' HTTP points, round by round, at that
    round's batches, so that a machine that slows down over the run slows both sides of a ratio; each side keeps
    its best round."""
    from benchmarks import http_load
    from benchmarks.peers import compare

    timeline: list[tuple] = []
    current: list[str] = []
    rates = {"lmserve": iter([6000.0, 9000.0]), "lmserve-1l": iter([5000.0, 4000.0])}
    answered = {"lmserve": iter([100, 300]), "lmserve-1l": iter([200, 100])}
    totals = [0.0, 0.0, 0.0]

    def start(setup, model, flags=()):
        current[:] = [setup]
        return setup, "http://x"

    def load(base, path, bodies, script, c, seconds):
        if seconds == 1.0:
            return {"requests": 0, "status": 0, "duration_us": 1e6, "p50_us": 1, "p99_us": 1,
                    "connect": 0, "read": 0, "write": 0, "timeout": 0}  # fmt: skip
        timeline.append(("http", current[0], c))
        n = next(answered[current[0]])
        totals[0] += 20.0 * n / 20  # batches of 20 sequences
        totals[1] += n / 20
        totals[2] += 0.1 * n / 20
        return {"requests": n, "status": 0, "duration_us": 1e6, "p50_us": 1000, "p99_us": 2000,
                "connect": 0, "read": 0, "write": 0, "timeout": 0}  # fmt: skip

    def measure(self, setup, points):
        ((n, t, b),) = points
        assert setup == current[0]
        rate = next(rates[current[0]])
        timeline.append(("engine", current[0], (n, t, b)))
        self.best[setup, n, t, b] = max(rate, self.best.get((setup, n, t, b), 0.0))
        self._seqs, self._predictions = [[0, 1]] * 40, 40
        return {(n, t, b): rate}

    monkeypatch.setattr(compare, "start", start)
    monkeypatch.setattr(compare, "stop", lambda proc: None)
    monkeypatch.setattr(compare.Ceiling, "measure", measure)
    monkeypatch.setattr(compare.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(http_load, "load", load)
    monkeypatch.setattr(http_load, "wait_idle", lambda base: None)
    monkeypatch.setattr(http_load, "batch_totals", lambda base: tuple(totals))
    pools = {"/score 1": ("/score", ["{}"], 20.0), "/next-word": ("/next-word", ["{}"], 1.0)}
    monkeypatch.setattr(http_load, "body_pools", lambda d: pools)
    compare.main(["--peer-setups", "lmserve", "lmserve-1l", "--endpoints", "/score 1", "--concurrency", "64",
                  "--rounds", "2", "--no-write"])  # fmt: skip
    # Round 1 in order, round 2 reversed; each setup's engine point right after its own HTTP point.
    assert timeline == [
        ("http", "lmserve", 64), ("engine", "lmserve", (2, 1, 20)),
        ("http", "lmserve-1l", 64), ("engine", "lmserve-1l", (1, 2, 20)),
        ("http", "lmserve-1l", 64), ("engine", "lmserve-1l", (1, 2, 20)),
        ("http", "lmserve", 64), ("engine", "lmserve", (2, 1, 20)),
    ]  # fmt: skip
    out = capsys.readouterr().out
    # Best rounds: lmserve 300 answered/s x 20 tokens against its best ceiling 9,000; lmserve-1l 200 x 20 / 5,000.
    assert "| lmserve | 64 | 20.0 | 6,000 | 9,000 | 67% |" in out
    assert "| lmserve-1l | 64 | 20.0 | 4,000 | 5,000 | 80% |" in out
    assert "round 1  lmserve in process  conc. 64  2 x batch 20 on 1 thread(s): 6,000 tokens/s, HTTP 33% of it" in out
    # Without a `/score` point there is nothing to hold against the engine, and the run still reports.
    timeline.clear()
    rates["lmserve"] = iter([])
    answered["lmserve"] = iter([100, 100])
    compare.main(["--peer-setups", "lmserve", "--endpoints", "/next-word", "--concurrency", "64", "--no-write"])
    assert [kind for kind, *_ in timeline] == ["http", "http"]
    assert "HTTP against the in-process engine" not in capsys.readouterr().out
    # A point both setups run (one client: a pass alone on both threads) keeps each setup's own best: each side of
    # a ratio is the best of as many rounds as the other.
    timeline.clear()
    rates.update({"lmserve": iter([6000.0, 7000.0]), "lmserve-1l": iter([9000.0, 5000.0])})
    answered.update({"lmserve": iter([300, 300]), "lmserve-1l": iter([300, 300])})
    compare.main(["--peer-setups", "lmserve", "lmserve-1l", "--endpoints", "/score 1", "--concurrency", "1",
                  "--rounds", "2", "--no-write"])  # fmt: skip
    assert {point for kind, _, point in timeline if kind == "engine"} == {(1, 2, 20)}
    out = capsys.readouterr().out
    assert "| lmserve | 1 | 20.0 | 6,000 | 7,000 | 86% |" in out
    assert "| lmserve-1l | 1 | 20.0 | 6,000 | 9,000 | 67% |" in out


def test_stage_medians_take_each_complete_cycle_from_one_recv_to_the_next() -> None:
    from benchmarks.instrumented import STAGES, stage_medians

    def cycle(t0: float, steps: list[float]) -> list[tuple[str, float]]:
        times = [t0]
        for step in steps:
            times.append(times[-1] + step)
        notes = list(zip(STAGES[:-1], times, strict=True))  # recv .. sent
        return [*notes, ("observed", times[-1] + 0.0001)]

    steps = [0.0003, 0.0001, 0.003, 0.0002, 0.0001, 0.0001]  # queued .. sent after recv
    notes = cycle(0.0, steps) + cycle(0.005, [2 * s for s in steps])
    notes += [("recv", 0.02), ("queued", 0.0203)]  # an incomplete cycle: no pass, left out
    notes += [*cycle(0.03, steps), ("recv", 0.04)]
    ms = stage_medians(notes)
    # Three complete cycles (the first two and the fourth); medians are the single steps' values.
    assert ms["queued"] == pytest.approx(0.3) and ms["passed"] == pytest.approx(3.0)
    assert ms["sent"] == pytest.approx(0.1) and ms["observed"] == pytest.approx(0.1)
    assert ms["cycle"] == pytest.approx(10.0)  # cycles of 5, 15 and 10 ms
    assert ms["client"] == pytest.approx(10.0 - sum(steps) * 1000)
    with pytest.raises(ValueError, match="no complete request cycle"):
        stage_medians([("recv", 0.0), ("queued", 0.1), ("recv", 0.2)])


def test_profile_stages_times_every_stage_of_one_clients_requests() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (apt-get install wrk); .ci/run installs it")
    out = run("benchmarks.profile_server", "--stages", "--seconds", "1", writes=False)
    rows = table_rows(out)
    ms = [float(r[2]) for r in rows]
    assert len(rows) == 8 and all(m > 0 for m in ms)
    assert rows[2][0] == "the forward pass" and rows[-1][0].startswith("the whole cycle")
    assert sum(ms[:-1]) == pytest.approx(ms[-1], rel=0.25)  # medians of the parts against the whole's median
    assert re.search(r"The forward pass is \d+% of a cycle", out)


def test_the_bare_server_answers_score_as_the_service_does() -> None:
    """`benchmarks.instrumented --bare` measures the same work: its /score answers are the service's, byte for
    byte, and every other request is still the service's."""
    import httpx

    bodies = [
        {"text": "the company said its sales rose"},
        {"sentences": ["the market fell", "Prices Rose $ 5"], "per_token": True},
        {"text": "no <unk> here", "normalize": False, "add_eos": False},
    ]
    answers = []
    for module in (("service",), ("benchmarks.instrumented", "--bare")):
        proc, base = common.start_server(["--device", "cpu"], {"LMSERVE_THREADS": "1"}, module=module)
        try:
            answers.append([httpx.post(base + "/score", json=b, timeout=30).content for b in bodies])
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
            assert httpx.post(base + "/next-word", json={"prefix": "the"}, timeout=30).status_code == 200
        finally:
            common.stop_server(proc)
    service, bare = answers
    assert bare == service


def test_the_bare_setup_is_the_defaults_behind_the_instrumented_server_on_demand() -> None:
    from benchmarks.peers.compare import PEER_SETUPS, command, engine_point

    cmd, env = command("lmserve-bare", 8123, "models/ptb-cpu")
    assert cmd[1:4] == ["-m", "benchmarks.instrumented", "--bare"] and "--model" in cmd and env == {}
    assert command("lmserve", 8123, "models/ptb-cpu")[0][1:3] == ["-m", "service"]
    assert "lmserve-bare" not in PEER_SETUPS  # not in the default run: not a service
    for conc, batch in [(1, 1.0), (8, 2.7), (64, 21.1)]:  # held against the engine as the defaults are
        assert engine_point("lmserve-bare", conc, batch, 2) == engine_point("lmserve", conc, batch, 2)


def test_ab_runs_the_working_tree_with_a_setting_against_it_without() -> None:
    out = run("benchmarks.ab", "--setting", "LMSERVE_LOG_LEVEL=info", "--concurrency", "1", "--rounds", "1",
              "--seconds", "1", writes=False)  # fmt: skip
    (row,) = table_rows(out)
    assert row[0] == "1" and float(row[1]) > 0 and float(row[2]) > 0
    assert "| with LMSERVE_LOG_LEVEL=info req/s | second / first |" in out
    assert "round 1  c = 1  with LMSERVE_LOG_LEVEL=info (working tree)" in out
    result = subprocess.run([sys.executable, "-m", "benchmarks.ab", "HEAD", "--bare"], cwd=REPO, capture_output=True)
    assert result.returncode == 2 and b"give one of" in result.stderr  # one comparison at a time
