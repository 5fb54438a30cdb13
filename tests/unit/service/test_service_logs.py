"""The server's log, as a real `python -m service` writes it: one stream, every line one JSON object (uvicorn's
own lines, start-up and shutdown included), a 500 logged with exactly one traceback (a field) and its request
id, never shown to the client."""

from __future__ import annotations

import json
import signal

import httpx
import torch
from service_helpers import start_server
from tiny_models import write_tiny_checkpoint

from lm.model import LSTMLanguageModel, ModelConfig


def test_every_line_is_json_and_a_500_logs_one_traceback_with_its_request_id(service_vocab, tmp_path) -> None:
    # A model whose every output is NaN: the runner refuses it, an error no handler answers (a 500).
    model = LSTMLanguageModel(ModelConfig(vocab_size=len(service_vocab), embed_size=4, hidden_size=4, num_layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ckpt = write_tiny_checkpoint(tmp_path / "nan-lm", model, service_vocab)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as out:
        proc, base = start_server(ckpt.path, stdout=out)
    try:
        r = httpx.post(base + "/score", json={"text": "the stock market"}, timeout=30)
        ok = httpx.get(base + "/healthz", headers={"X-Request-ID": "fine-1"}, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "non-finite" not in r.text and "Traceback" not in r.text
    assert ok.status_code == 200
    failed_id = r.headers["x-request-id"]

    assert proc.stderr.read() == ""  # one stream: stdout
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line JSON
    assert all({"time", "level", "logger"} <= set(line) for line in lines)
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "service", "service.access", "service.engine"} <= loggers, loggers
    assert any("Application startup complete" in line.get("message", "") for line in lines)
    with_traceback = [line for line in lines if "traceback" in line]
    assert len(with_traceback) == 1, with_traceback
    assert with_traceback[0]["request_id"] == failed_id
    assert "NonFiniteOutputError" in with_traceback[0]["traceback"]
    access = {line["request_id"]: line["status"] for line in lines if line["logger"] == "service.access"}
    assert access[failed_id] == 500 and access["fine-1"] == 200
