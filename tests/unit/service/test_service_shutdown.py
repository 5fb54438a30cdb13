"""SIGTERM under load: the server stops accepting, answers everything it accepted, and exits 0; with a drain
period /readyz turns 503 first so that a load balancer stops sending."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
from service_helpers import start_server as start

REPO = Path(__file__).resolve().parents[3]


def test_sigterm_during_load_answers_every_accepted_request_and_exits_0(service_ckpt, tmp_path) -> None:
    """Every request the server accepted (its access log has it) is answered 200; a request caught in the
    instant the listener closes, before the server read it, may be reset (that is what LMSERVE_DRAIN_S is for),
    but then the server never saw it."""
    # A long batching wait keeps requests queued when the signal comes: those must be computed, not dropped.
    log_path = tmp_path / "access.log"
    with log_path.open("w") as log_file:
        proc, base = start(
            service_ckpt.path, stdout=log_file, LMSERVE_MAX_WAIT_MS="150", LMSERVE_MAX_BATCH_SEQUENCES="4"
        )
    outcomes: list[tuple[str, object]] = []
    started = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            request_id = f"c{i}-{n}"
            try:
                # One connection per request.
                with httpx.Client(timeout=30) as c:
                    r = c.post(
                        base + "/score",
                        json={"sentences": [f"the stock market {i}"] * 3},
                        headers={"X-Request-ID": request_id},
                    )
                    result: object = r.status_code
            except httpx.ConnectError:
                result = "refused"  # after the listener closed: never accepted, nothing to answer
            except httpx.HTTPError as e:
                result = f"lost: {type(e).__name__}: {e}"
            with lock:
                outcomes.append((request_id, result))
            started.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    started.wait(10)
    time.sleep(0.5)  # the load is running: requests in flight and in the queue
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    stop.set()  # no new requests after the signal (a request sent after it may or may not be accepted)
    for t in threads:
        t.join(30)
    code = proc.wait(30)
    assert code == 0, proc.stderr.read()
    seen = {}  # request id -> status, for every request the server accepted and finished
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry["logger"] == "service.access":  # the log's other lines (uvicorn's, the service's) are JSON too
            seen[entry["request_id"]] = entry["status"]
    answered = [rid for rid, o in outcomes if o == 200]
    assert len(answered) >= 8
    assert all(seen.get(rid) == 200 for rid in answered)
    assert set(seen.values()) == {200}, seen  # nothing the server accepted ended otherwise
    for rid, o in outcomes:
        if o != 200:  # refused, or reset before the server read it: then it is not in the access log
            assert o == "refused" or rid not in seen, (rid, o, seen.get(rid))


def test_drain_period_turns_readyz_503_while_still_serving(service_ckpt) -> None:
    proc, base = start(service_ckpt.path, LMSERVE_DRAIN_S="1.5")
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(base + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        # Still answering during the drain: a load balancer has time to stop sending.
        assert httpx.post(base + "/score", json={"text": "the stock market"}, timeout=5).status_code == 200
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
