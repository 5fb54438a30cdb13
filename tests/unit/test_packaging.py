"""What the deployment files promise: compose passes every setting, fails visibly, and the service installs
without the trainer's libraries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
# The image fixes where the server listens inside the container; LMSERVE_PUBLISH maps it on the host.
FIXED_BY_THE_IMAGE = {"LMSERVE_HOST", "LMSERVE_PORT"}
SETTINGS = sorted(f"LMSERVE_{name.upper()}" for name in Settings.model_fields)


def _server(config: dict) -> dict:
    return config["services"]["server"]


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_compose_names_every_setting() -> None:
    environment = _server(yaml.safe_load(COMPOSE_FILE.read_text()))["environment"]
    missing = [name for name in SETTINGS if name not in environment and name not in FIXED_BY_THE_IMAGE]
    assert not missing, f"docker-compose.yml drops {missing}"


@pytest.mark.skipif(_compose_command() is None, reason="needs docker-compose or `docker compose`")
def test_every_setting_of_the_shell_reaches_the_service_through_compose() -> None:
    """`LMSERVE_API_KEY=... docker-compose up` must not leave /score open: every value set is passed on."""
    given = {name: f"value-of-{name.lower()}" for name in SETTINGS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMSERVE_")} | given
    out = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    environment = _server(yaml.safe_load(out))["environment"]
    for name in sorted(set(SETTINGS) - FIXED_BY_THE_IMAGE):
        assert environment.get(name) == given[name], name
    # Settings the shell does not set are not passed as empty strings (an empty API key is refused at start).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMSERVE_")}
    out = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config"], cwd=REPO, env=env, capture_output=True, text=True
    ).stdout
    unset = {k: v for k, v in _server(yaml.safe_load(out))["environment"].items() if k != "LMSERVE_MODEL"}
    assert set(unset.values()) == {None}


def test_a_server_that_cannot_start_is_not_restarted_forever() -> None:
    restart = _server(yaml.safe_load(COMPOSE_FILE.read_text()))["restart"]
    policy, _, retries = restart.partition(":")
    assert policy == "on-failure" and 0 < int(retries) <= 5


def test_the_trainer_runs_as_a_chosen_user_and_reads_the_data_only() -> None:
    trainer = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["trainer"]
    assert "TRAINER_USER" in trainer["user"]
    assert any(v.endswith(":/data/ptb:ro") for v in trainer["volumes"])


def test_the_service_extra_carries_no_trainer_library() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serving = " ".join(extras["serve"])
    assert "matplotlib" not in serving and "tqdm" not in serving
    assert "matplotlib" in " ".join(extras["train"])


def test_the_service_imports_without_the_trainer_libraries() -> None:
    """What the service image installs (the `serve` extra) is enough to build the app."""
    blocked = "import sys; sys.modules.update(matplotlib=None, tqdm=None); import service.app, service.__main__"
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
