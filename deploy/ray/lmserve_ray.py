"""The scoring service as a Ray Serve application: the FastAPI app of `service.app.create_app`, one copy with
its own model and batching engine per replica, behind Ray's HTTP proxy.

    serve run deploy/ray/serve.yaml         # on a Ray cluster started with `ray start` (docs/ray.md)

Settings reach every replica as `LMSERVE_*` environment variables (the builder's `settings` argument), exactly
as they reach a container, so the service reads them the way it always does (`create_app_from_env`). Replicas
are counted by the builder's `num_replicas`, or autoscaled on the requests each one has in flight. Each node
needs the project installed (`pip install .[ray]`) and the model at the same path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from service.app import create_app_from_env
from service.settings import Settings


@serve.deployment(
    # The batching engine wants many requests at once: a replica reaches its best throughput at 32-64 in
    # flight (docs/benchmarks.md); past this many Ray queues them in the proxy instead.
    max_ongoing_requests=256,
    # On shutdown (scale-down, redeploy), wait for the requests in flight, checking every 2 s, for up to 30 s.
    graceful_shutdown_wait_loop_s=2,
    graceful_shutdown_timeout_s=30,
    health_check_period_s=5,
)
# A factory, not an app: Ray calls it in each replica, so the app reads the environment the builder gave the
# replica. An app object made here would be made where the application is built (Ray's controller, without
# those variables) and shipped to the replicas with its settings frozen.
@serve.ingress(create_app_from_env)
class LMServe:
    """One replica: the service's FastAPI app, its lifespan (model load, warm-up, engine) run by Ray Serve."""

    async def check_health(self) -> None:
        """Ray restarts a replica whose /readyz is not 200 (engine stopped, model not loaded)."""
        status = await asgi_get_status(self.app, "/readyz")
        if status != 200:
            raise RuntimeError(f"/readyz answered {status}")


async def asgi_get_status(asgi_app: FastAPI, path: str) -> int:
    """The status code of a GET request to `path`, answered by the app in process (no socket)."""
    status = 0
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await asgi_app(scope, receive, send)
    return status


class LMServeArgs(BaseModel):
    """What `serve run lmserve_ray:build key=value ...` or a config file's `args` may set."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="service settings by their Settings names (model, max_wait_ms, api_key, ...): the "
        "LMSERVE_* variables without the prefix, in lower case",
    )
    num_replicas: int | None = Field(None, ge=1, description="a fixed number of replicas; unset: autoscaling")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        32, gt=0, description="requests in flight per replica the autoscaler aims at (the batching engine's sweet spot)"
    )
    num_cpus: float = Field(2, gt=0, description="CPUs Ray reserves per replica; torch uses as many threads")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (the settings' device then defaults to cuda)")


def replica_environment(args: LMServeArgs) -> dict[str, str]:
    """The LMSERVE_* variables a replica gets: the settings given, checked here (a typo fails the deploy, not
    every replica), the model path made absolute (replicas do not start in the current directory), and as many
    torch threads as Ray reserves CPUs."""
    given = dict(args.settings)
    unknown = set(given) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}; known: {sorted(Settings.model_fields)}")
    given.setdefault("threads", max(1, int(args.num_cpus)))
    settings = Settings(**given)  # validates every value
    given["model"] = str(Path(settings.model).resolve())
    return {f"LMSERVE_{name.upper()}": str(value) for name, value in given.items() if value is not None}


def build(args: dict[str, Any]) -> Application:
    """Application builder: `serve run lmserve_ray:build num_replicas=2` or a config file's `import_path`."""
    parsed = LMServeArgs(**args)
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": parsed.num_cpus,
            "num_gpus": parsed.num_gpus,
            "runtime_env": {"env_vars": replica_environment(parsed)},
        }
    }
    if parsed.num_replicas is not None:
        options["num_replicas"] = parsed.num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": parsed.min_replicas,
            "max_replicas": parsed.max_replicas,
            "target_ongoing_requests": parsed.target_ongoing_requests,
            "upscale_delay_s": 10,
            "downscale_delay_s": 120,
        }
    return LMServe.options(**options).bind()
