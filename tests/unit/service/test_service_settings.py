"""Settings that cannot mean what the operator wanted are refused at start, in one line, before the model loads."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import run_service_cli

from service.app import create_app
from service.settings import Settings, settings_error


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LMSERVE_API_KEY": ""}, "LMSERVE_API_KEY: is empty"),
        ({"LMSERVE_API_KEY": " s3cret "}, "LMSERVE_API_KEY: has spaces"),
        ({"LMSERVE_API_KEY": "s3cret\n"}, "LMSERVE_API_KEY: has spaces"),
        ({"LMSERVE_MAX_WAIT_MS": "inf"}, "LMSERVE_MAX_WAIT_MS"),
        ({"LMSERVE_MAX_WAIT_MS": "1e9"}, "LMSERVE_MAX_WAIT_MS"),
        ({"LMSERVE_REQUEST_TIMEOUT_S": "nan"}, "LMSERVE_REQUEST_TIMEOUT_S"),
        ({"LMSERVE_BUSY_DELAY_MS": "-inf"}, "LMSERVE_BUSY_DELAY_MS"),
        ({"LMSERVE_DRAIN_S": "1e300"}, "LMSERVE_DRAIN_S"),
        ({"LMSERVE_WORKERS": "100000"}, "LMSERVE_WORKERS"),
        ({"LMSERVE_LOG_LEVEL": "loud"}, "LMSERVE_LOG_LEVEL"),
    ],
)
def test_unusable_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = settings_error(caught.value)
    assert says in message and "\n" not in message
    assert "s3cret" not in message  # a key is never echoed


def test_a_key_and_finite_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSERVE_API_KEY", "s3cret")
    monkeypatch.setenv("LMSERVE_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("LMSERVE_LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.api_key.get_secret_value() == "s3cret"
    assert settings.max_wait_ms == 2.5 and settings.log_level == "warning"


@pytest.mark.parametrize(("name", "value"), [("LMSERVE_API_KEY", ""), ("LMSERVE_MAX_WAIT_MS", "inf")])
def test_cli_refuses_a_bad_setting_in_one_line(name: str, value: str) -> None:
    proc = run_service_cli("--port", "0", env={name: value}, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid setting {name}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_finds_a_taken_port_before_loading_the_model() -> None:
    """The model path does not exist: the port being the complaint shows it was checked first."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_service_cli("--model", "/nonexistent", "--port", str(port), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], proc.stderr
    assert "nonexistent" not in proc.stderr


@pytest.mark.parametrize("value", [None, [], "n/a"])
def test_model_card_of_a_checkpoint_whose_metrics_are_not_an_object(tmp_path, service_ckpt, value) -> None:
    ckpt = shutil.copytree(service_ckpt.path, tmp_path / "ck")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["metrics"] = meta["training"] = value
    (ckpt / "config.json").write_text(json.dumps(meta))
    with TestClient(create_app(Settings(model=ckpt, device="cpu"))) as client:
        r = client.get("/model")
    assert r.status_code == 200, r.text
    assert set(r.json()["metrics"].values()) == {None}
    assert set(r.json()["training"].values()) == {None}
