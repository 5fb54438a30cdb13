"""Only the forward lanes run torch on several threads (service/runner.py's docstring): libgomp gives each thread
that starts a parallel region a team of its own, and once the process holds more OpenMP threads than CPUs every
idle worker sleeps between the small regions of a pass (a one-sentence pass twice as slow). The server as a user
starts it (`python -m service`, the bundled model, whose kernels do run in parallel), driven through every kind
of pass: the OpenMP workers it holds afterwards fit in the threads it was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from service_helpers import REPO_ROOT

from benchmarks.common import free_port

# Runs `python -m service` in this process's main thread, as the command does; a thread of its own drives it and
# counts (`foreign_threads`: OpenMP's workers, and OpenBLAS's, counted before as the baseline), then stops it.
SCRIPT = r"""
import json, os, signal, sys, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import service.__main__ as cli
from benchmarks.common import foreign_threads

base, port = foreign_threads(), int(sys.argv[1])

def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200, r.status
        return json.loads(r.read())

def drive():
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        text = "the company said profits rose to a new high in the last quarter"
        for _ in range(5):  # alone: the first lane's passes, on every thread it may take
            post("/score", {"text": text, "per_token": True})
            post("/next-word", {"prefix": text, "top_k": 10})
        with ThreadPoolExecutor(16) as pool:  # together: passes side by side in the lanes
            list(pool.map(lambda i: post("/score", {"text": text[: 20 + i]}), range(64)))
        post("/score", {"sentences": [text] * 200, "per_token": True})  # an answer built in a worker thread
        post("/v1/completions", {"prompt": text, "max_tokens": 4, "logprobs": 5})
        time.sleep(0.5)
        print(json.dumps({"workers": foreign_threads() - base}), flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=drive, daemon=True).start()
sys.exit(cli.main(["--port", str(port), "--log-level", "warning"]))
"""


@pytest.mark.parametrize(("threads", "lanes"), [(2, 2), (4, 2), (2, 1)])
def test_the_servers_openmp_workers_fit_in_its_threads(threads: int, lanes: int) -> None:
    """At most threads - 1 workers: the lanes' teams (a lane's own thread leads its team) and nothing else's,
    with two lanes of four threads too (a pass alone there takes three: the threads the other lane's team
    leaves)."""
    port = free_port()
    env = {**os.environ, "LMSERVE_THREADS": str(threads), "LMSERVE_FORWARD_LANES": str(lanes)}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(port)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    workers = json.loads(out.stdout.strip().splitlines()[-1])["workers"]
    assert 1 <= workers <= threads - 1, workers
