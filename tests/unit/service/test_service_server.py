"""The real server (`python -m service`): what uvicorn's settings must bound before the app sees a request."""

from __future__ import annotations

import json
import signal

import httpx
from service_helpers import start_server


def test_forwarded_for_is_not_believed_from_an_unnamed_proxy(service_ckpt, tmp_path) -> None:
    log_path = tmp_path / "access.log"
    with log_path.open("w") as log_file:
        proc, base = start_server(service_ckpt.path, stdout=log_file)
    try:
        r = httpx.get(base + "/healthz", headers={"X-Forwarded-For": "<script>alert(1)</script>"}, timeout=30)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    clients = {line["client"] for line in lines if line["logger"] == "service.access" and line["route"] == "/healthz"}
    assert clients == {"127.0.0.1"}, clients
