"""Operations: health and readiness, /model, the OpenAPI document, and the command line's failure mode."""

from __future__ import annotations

import json
import re

import pytest
import torch
from fastapi.testclient import TestClient
from service_helpers import METRICS, assert_envelope, run_service_cli


def test_healthz(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_when_ready(client, service_ckpt) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["model"] == service_ckpt.path.name
    assert body["queue_size"] == 0


def test_not_ready_before_the_lifespan_starts(make_app) -> None:
    app = make_app()
    assert app.state.ready is False
    client = TestClient(app)  # no `with`: the lifespan does not run
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert_envelope(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    assert_envelope(client.get("/model"), 503, "not_ready")
    assert_envelope(client.post("/score", json={"text": "the"}), 503, "not_ready")
    assert_envelope(client.post("/next-word", json={"prefix": "the"}), 503, "not_ready")


def test_not_ready_after_shutdown(make_app) -> None:
    app = make_app()
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
    assert app.state.ready is False
    after = TestClient(app)
    assert_envelope(after.get("/readyz"), 503, "not_ready")
    assert_envelope(after.post("/score", json={"text": "the"}), 503, "not_ready")


def test_model_describes_the_checkpoint(client, service_ckpt) -> None:
    r = client.get("/model")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == service_ckpt.path.name
    assert body["parameters"] == service_ckpt.model.num_parameters()
    assert body["device"] == "cpu"
    assert body["dtype"] == "float32"
    assert body["vocab_size"] == len(service_ckpt.vocab)
    config = json.loads((service_ckpt.path / "config.json").read_text())
    assert body["format"] == config["format"]
    for key in ("vocab_size", "embed_size", "hidden_size", "num_layers", "tie_weights", "dropout"):
        assert body["config"][key] == config[key]
    assert body["metrics"]["valid_ppl"] == config["metrics"]["valid_ppl"] == METRICS["valid_ppl"]
    assert body["metrics"]["test_ppl"] == config["metrics"]["test_ppl"] == METRICS["test_ppl"]
    assert body["training"]["seed"] == 1234
    assert body["tokenizer"] == config["tokenizer"] == {"name": "ptb"}  # the tokenizer normalize: true applies


def tensors_in(value) -> list[torch.Tensor]:
    """Every tensor in a module's output (a tensor, or nested tuples of them such as the LSTM's)."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in tensors_in(v)] if isinstance(value, tuple | list) else []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtype_is_what_the_model_computes_in(serve, dtype: str) -> None:
    """LMSERVE_DTYPE is not only what /model reports: every weight is in that dtype, and so is the output of
    the embedding, the LSTM and the decoder while a request is scored."""
    with serve(dtype=dtype) as client:
        assert client.get("/model").json()["dtype"] == dtype
        model = client.app.state.runner.model
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        outputs: list[torch.Tensor] = []
        hooks = [
            m.register_forward_hook(lambda module, args, out: outputs.extend(tensors_in(out)))
            for m in (model.embedding, model.lstm, model.decoder)
        ]
        try:
            assert client.post("/score", json={"text": "the stock market rose"}).status_code == 200
        finally:
            for hook in hooks:
                hook.remove()
    assert len(outputs) >= 3
    assert {t.dtype for t in outputs if t.is_floating_point()} == {getattr(torch, dtype)}


def test_bfloat16_gives_other_bits_within_its_precision(serve) -> None:
    logprobs = {}
    for dtype in ("float32", "bfloat16"):
        with serve(dtype=dtype) as client:
            r = client.post("/score", json={"text": "the stock market rose", "per_token": True})
            assert r.status_code == 200
            logprobs[dtype] = r.json()["results"][0]["token_logprobs"]
    assert logprobs["bfloat16"] != logprobs["float32"]  # computed in bfloat16, not float32 relabelled
    assert logprobs["bfloat16"] == pytest.approx(logprobs["float32"], abs=0.1)


def test_openapi_lists_the_routes_with_examples(client) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    for path in ("/score", "/next-word"):
        assert "post" in doc["paths"][path], path
    for path in ("/healthz", "/readyz", "/metrics", "/model"):
        assert "get" in doc["paths"][path], path
    schemas = doc["components"]["schemas"]
    for name in ("ScoreRequest", "NextWordRequest"):
        examples = schemas[name].get("examples")
        assert examples, f"{name} has no examples"
    assert any("text" in e for e in schemas["ScoreRequest"]["examples"])
    assert any("prefix" in e for e in schemas["NextWordRequest"]["examples"])
    # Every log-probability field says its base.
    fields = schemas["SentenceScore"]["properties"]
    assert "natural log" in fields["logprob"]["description"]
    assert "base 10" in fields["log10prob"]["description"]
    # The error envelope is documented for the 4xx answers.
    responses = doc["paths"]["/score"]["post"]["responses"]
    assert "422" in responses and "429" in responses
    assert client.get("/docs").status_code == 200


def test_cli_with_a_missing_model_says_one_line_and_exits_non_zero(tmp_path) -> None:
    proc = run_service_cli("--model", "/nonexistent")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "/nonexistent" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_with_a_broken_checkpoint_says_one_line(tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    proc = run_service_cli("--model", str(broken))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "config.json" in lines[0]
    assert "Traceback" not in proc.stderr


def test_web_page_and_its_files_are_served_from_the_package(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        r = client.get("/" + asset)
        assert r.status_code == 200 and len(r.content) > 500
    assert "http" not in client.get("/static/app.js").text.replace("HTTP ", "")  # no CDN, nothing fetched elsewhere
    assert client.get("/static/nope.js").status_code == 404


def test_api_docs_work_offline_and_offer_the_key(serve) -> None:
    """Swagger UI's files come from the server itself (no CDN), and with a key the schema declares the bearer
    scheme on exactly the routes that need it, so that "Authorize" sends it."""
    with serve(api_key="s3cret") as client:
        page = client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        for url in urls:
            assert client.get(url).status_code == 200, url
        assert client.get("/redoc").status_code == 404  # no offline copy: not served
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        keyed = {p for p, ops in schema["paths"].items() for op in ops.values() if op.get("security")}
        assert keyed == {
            "/score",
            "/next-word",
            "/model",
            "/v1/completions",
            "/v1/models",
            "/tokenizer_info",
            "/tokenize",
            "/detokenize",
        }
    with serve() as client:
        schema = client.get("/openapi.json").json()
        assert not any(op.get("security") for ops in schema["paths"].values() for op in ops.values())
