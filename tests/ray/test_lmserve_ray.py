"""The Ray Serve application's configuration, checked without a cluster: what `build` hands Ray for given
arguments, and that the shipped deploy/ray/serve.yaml passes Ray's own schema and builds.

    python -m pytest -q tests/ray          # needs the `ray` extra; `make ray-test` runs it before its cluster
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.serve", reason="the `ray` extra is not installed (`make ray-test` installs it)")

from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "ray"))
import lmserve_ray  # noqa: E402

MODEL = ROOT / "models" / "ptb-small"


def deployment(args: dict):
    """The deployment `build(args)` binds, as Ray will create it."""
    return lmserve_ray.build(args)._bound_deployment


def environment(dep) -> dict[str, str]:
    return dep.ray_actor_options["runtime_env"]["env_vars"]


def test_fixed_replicas_reserve_the_cpus_and_give_torch_as_many_threads() -> None:
    dep = deployment({"num_replicas": 2, "num_cpus": 3, "settings": {"model": str(MODEL), "max_wait_ms": 4}})
    assert dep.num_replicas == 2
    assert dep._deployment_config.autoscaling_config is None
    assert dep.ray_actor_options["num_cpus"] == 3
    assert dep.ray_actor_options["num_gpus"] == 0
    env = environment(dep)
    assert env["LMSERVE_THREADS"] == "3"
    assert env["LMSERVE_MAX_WAIT_MS"] == "4"
    assert env["LMSERVE_MODEL"] == str(MODEL)


def test_explicit_threads_win_over_the_cpu_count() -> None:
    env = environment(deployment({"num_replicas": 1, "num_cpus": 4, "settings": {"threads": 1}}))
    assert env["LMSERVE_THREADS"] == "1"


def test_a_relative_model_path_is_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    env = environment(deployment({"settings": {"model": "models/ptb-small"}}))
    assert env["LMSERVE_MODEL"] == str(MODEL)


def test_without_num_replicas_the_deployment_autoscales_on_requests_in_flight() -> None:
    dep = deployment({"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 16})
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (2, 6, 16)
    assert (auto.upscale_delay_s, auto.downscale_delay_s) == (10, 120)


def test_graceful_shutdown_and_health_check_settings() -> None:
    config = deployment({"num_replicas": 1})._deployment_config
    assert config.max_ongoing_requests == 256
    assert (config.graceful_shutdown_wait_loop_s, config.graceful_shutdown_timeout_s) == (2, 30)
    assert config.health_check_period_s == 5


def test_an_unknown_setting_fails_the_build_with_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown settings: \['max_wait'\]"):
        deployment({"settings": {"max_wait": 2}})


@pytest.mark.parametrize("args", [{"replicas": 2}, {"num_replicas": 0}, {"num_cpus": 0}, {"settings": {"threads": 0}}])
def test_bad_arguments_are_refused(args: dict) -> None:
    with pytest.raises(ValidationError):
        deployment(args)


def test_the_shipped_config_passes_rays_schema_and_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # what `serve run` checks first
    (app,) = config["applications"]
    assert app["import_path"] == "lmserve_ray:build"
    monkeypatch.chdir(ROOT)
    dep = deployment(app["args"])
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (app["args"]["min_replicas"], app["args"]["max_replicas"])
    assert environment(dep)["LMSERVE_MODEL"] == str(ROOT / app["args"]["settings"]["model"])
