"""Run the service: `python -m service --model models/ptb-cpu --host 0.0.0.0 --port 8000`.

Flags override the `LMSERVE_*` environment variables of the same names; with `--workers N` each worker
process loads its own copy of the model.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

import uvicorn
from pydantic import ValidationError
from uvicorn.supervisors.multiprocess import Multiprocess

from lm.checkpoint import CheckpointError, load_checkpoint
from service.connection import KEEP_ALIVE_S, GuardedHttpToolsProtocol
from service.logs import log_config
from service.metrics import prepare_multiprocess
from service.runner import one_thread
from service.settings import Settings, settings_error

WORKER_HEALTHCHECK_S = 60  # seconds a worker may take to answer the supervisor's ping (start-up included)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint directory (LMSERVE_MODEL)")
    p.add_argument("--host", help="bind address (LMSERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (LMSERVE_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (LMSERVE_WORKERS, default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="LMSERVE_DEVICE")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="LMSERVE_DTYPE")
    p.add_argument("--max-batch-sequences", type=int, help="LMSERVE_MAX_BATCH_SEQUENCES")
    p.add_argument("--max-wait-ms", type=float, help="LMSERVE_MAX_WAIT_MS")
    p.add_argument("--log-level", help="LMSERVE_LOG_LEVEL")
    args = p.parse_args(argv)
    for name, value in vars(args).items():
        if value is not None:
            os.environ[f"LMSERVE_{name.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"error: {settings_error(e)}", file=sys.stderr)
        return 2
    # A taken port is found in a millisecond, not after the model has loaded.
    problem = bind_problem(settings.host, settings.port)
    if problem is not None:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {problem}", file=sys.stderr)
        return 2
    try:
        with one_thread():  # (no OpenMP team of this thread's beside the lanes': runner.py's docstring)
            load_checkpoint(settings.model)  # a bad checkpoint ends here with one line, before uvicorn starts
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # uvicorn re-raises the SIGTERM it handled once it has finished the requests in flight: that stop is the
    # normal end of a server, exit code 0 (not the default action's 143).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cleanup_metrics = prepare_multiprocess(settings.workers)
    try:
        serve(settings)
    finally:
        cleanup_metrics()
    return 0


def serve(settings: Settings) -> None:
    """uvicorn, in this process or as the supervisor of `settings.workers` worker processes."""
    options = dict(
        app="service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,  # service.access logs one JSON line per request instead
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        log_config=log_config(settings.log_level),  # every line JSON on stdout, in every worker
        # X-Forwarded-For only from the proxies named (uvicorn's default trusts any local peer's).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        # A request head bounded in size and time, idle connections closed (service.connection).
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=KEEP_ALIVE_S,
        # With --workers, the supervisor kills a worker that does not answer its ping within this; uvicorn's 5 s
        # killed workers still importing torch on a loaded machine, and a busy one mid-batch.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
    if settings.workers == 1:
        uvicorn.run(**options)
        return
    config = uvicorn.Config(**options)
    Supervisor(config, sockets=[config.bind_socket()]).run()


class Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, which sees a worker die while it waits for that worker's ping.

    uvicorn pings each worker over a pipe whose worker end the supervisor also keeps open, so a worker killed
    between the ping and its answer leaves the supervisor waiting out the whole health-check timeout (60 s here)
    before it starts a replacement. Closing the supervisor's copy of each started worker's end makes the worker's
    death an end-of-file on that pipe, which ends the wait at once."""

    def init_processes(self) -> None:
        super().init_processes()
        self.release_worker_ends()

    def keep_subprocess_alive(self) -> None:
        self.release_worker_ends()  # workers started by restart_all or SIGTTIN since the last round
        super().keep_subprocess_alive()
        self.release_worker_ends()

    def release_worker_ends(self) -> None:
        for process in self.processes:
            if process.pid is not None:  # started: the worker has its own copy of the descriptor
                process.child_conn.close()


def bind_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port (in use, no such address), or None; binds as uvicorn does."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return str(e)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            return e.strerror or str(e)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
