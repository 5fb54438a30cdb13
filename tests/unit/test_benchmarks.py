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


def run(*args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args, "--no-write"], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
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
