"""The deployment files agree with the service: settings they set exist, probes ask routes it has, and a pod or
container is given time to drain and finish before it is killed. (Rendering and schema validation of the
Kubernetes manifests: `make k8s-validate`.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def settings_env_names() -> set[str]:
    return {"LMSERVE_" + name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("path", [BASE / "configmap.yaml", BASE / "secret.yaml", OVERLAYS / "gpu" / "settings.yaml"])
def test_every_variable_set_is_a_setting(path):
    doc = load(path)
    keys = set(doc.get("data") or {}) | set(doc.get("stringData") or {})
    assert keys, path
    # An unknown LMSERVE_* variable is ignored by the service without a word: a typo would go unnoticed.
    assert keys <= settings_env_names(), keys - settings_env_names()


def test_kubernetes_settings_are_valid():
    data = load(BASE / "configmap.yaml")["data"]
    env = {k.removeprefix("LMSERVE_").lower(): v for k, v in data.items()}
    Settings(**env)


def test_probes_ask_routes_the_service_has():
    # Routes added on the app itself have a path; included routers (the adapters) are wrapped and have none.
    routes = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    container = load(BASE / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    probes = {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"] == "/readyz" and probes["livenessProbe"] == "/healthz"
    assert set(probes.values()) <= routes


def test_pod_is_not_killed_before_it_drains_and_finishes():
    data = load(BASE / "configmap.yaml")["data"]
    pod = load(BASE / "deployment.yaml")["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + float(data["LMSERVE_DRAIN_S"]) + float(data["LMSERVE_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > needed


def test_compose_replica_is_not_killed_before_it_drains_and_finishes():
    server = load(ROOT / "docker" / "compose.scale.yml")["services"]["server"]
    drain = float(re.fullmatch(r"\$\{LMSERVE_DRAIN_S:-(\d+)\}", server["environment"]["LMSERVE_DRAIN_S"])[1])
    grace = float(server["stop_grace_period"].removesuffix("s"))
    assert grace > drain + Settings.model_fields["graceful_timeout_s"].default


def test_pod_runs_as_the_images_user_with_a_read_only_root():
    pod = load(BASE / "deployment.yaml")["spec"]["template"]["spec"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile)[1])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
