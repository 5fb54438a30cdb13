"""Checks of the Ray Serve application on a running two-node cluster; deploy/ray/test-cluster.sh runs it inside
its namespaces once the application and a directly started service answer.

    python deploy/ray/check_cluster.py --ray 127.0.0.1:6379 --serve http://127.0.0.1:8000 \
        --direct http://127.0.0.1:8001 --second-node-port 6390

1. Two replicas are alive, on two different nodes.
2. /score and /next-word through Ray's proxy give the JSON the service run directly gives, to the last digit.
3. The second node's processes are killed (its raylet and everything under it, as a crashed machine would
   lose them): requests through the proxy go on being answered by the replica left, until Ray has declared the
   node dead and ten more in a row after that.
4. Graceful shutdown: requests in flight when the application is deleted are all answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import ray
from ray import serve as serve_api
from ray._private.state import actors as gcs_actor_table

REPLICA_CLASS = "ServeReplica:lmserve:LMServe"
SCORE = {
    "sentences": ["the stock market rose sharply on friday", "mr. smith said the company 's profit fell"],
    "per_token": True,
}
NEXT_WORD = {"prefix": "the company said", "top_k": 5, "candidates": ["it", "that"]}


def post(base: str, path: str, body: dict, timeout: float = 30) -> tuple[int, dict | str]:
    """Status and parsed JSON body (or the error text) of one POST."""
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:300].decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def alive_replicas() -> list[str]:
    """Node ids of the application's live replicas, read from the head's GCS (Ray's state API would need the
    dashboard, which the test does not start)."""
    actors = gcs_actor_table(actor_state_name="ALIVE").values()
    return [a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == REPLICA_CLASS]


def check_replicas_on_two_nodes(deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        nodes = alive_replicas()
        if len(nodes) == 2 and len(set(nodes)) == 2:
            print(f"ok    2 replicas alive on 2 nodes ({', '.join(n[:8] for n in nodes)})")
            return
        if time.monotonic() > end:
            sys.exit(f"FAIL  replicas alive on nodes {nodes} after {deadline_s:g} s (want 2 on 2 nodes)")
        time.sleep(1)


def check_same_answers(serve: str, direct: str, rounds: int) -> None:
    for path, body in (("/score", SCORE), ("/next-word", NEXT_WORD)):
        want_status, want = post(direct, path, body)
        assert want_status == 200, (path, want_status, want)
        for i in range(rounds):
            status, got = post(serve, path, body)
            if (status, got) != (200, want):
                sys.exit(f"FAIL  {path} through Ray, request {i + 1}: {status} {got!r}\n      direct: {want!r}")
        print(f"ok    {path}: {rounds} answers through Ray's proxy equal the direct answer, JSON for JSON")


def descendants(pid: int) -> list[int]:
    """pid and every process under it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def raylet_pid(node_manager_port: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"raylet") and f"--node_manager_port={node_manager_port}".encode() in args:
            return int(entry)
    sys.exit(f"FAIL  no raylet with --node_manager_port={node_manager_port}")


def node_id_by_port(node_manager_port: int) -> str:
    for n in ray.nodes():
        if n["Alive"] and n["NodeManagerPort"] == node_manager_port:
            return n["NodeID"]
    sys.exit(f"FAIL  no live node with node manager port {node_manager_port}")


def node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def check_survives_node_loss(serve: str, direct: str, node_manager_port: int, deadline_s: float, streak: int) -> None:
    """Kill the node, then go on asking until Ray has declared it dead and `streak` answers in a row (each
    equal to the direct one) have come after that; failures in between are allowed, counted and shown."""
    _, want = post(direct, "/score", SCORE)
    node_id = node_id_by_port(node_manager_port)
    pids = descendants(raylet_pid(node_manager_port))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    print(f"      killed the second node ({node_id[:8]}): its raylet and {len(pids) - 1} processes under it")
    start = time.monotonic()
    declared_dead_s: float | None = None
    answered = failed = in_a_row = 0
    first_failures: list[str] = []
    while declared_dead_s is None or in_a_row < streak:
        if time.monotonic() - start > deadline_s:
            sys.exit(
                f"FAIL  {answered} answered, {failed} failed; node declared dead after {declared_dead_s} s; no "
                f"{streak} in a row after that within {deadline_s:g} s; first failures: {first_failures}"
            )
        if declared_dead_s is None and not node_alive(node_id):
            declared_dead_s, in_a_row = time.monotonic() - start, 0
        status, body = post(serve, "/score", SCORE)
        if (status, body) == (200, want):
            answered, in_a_row = answered + 1, in_a_row + 1
        else:
            failed, in_a_row = failed + 1, 0
            if len(first_failures) < 3:
                first_failures.append(f"{status} {body!r}"[:200])
        time.sleep(0.2)
    took = time.monotonic() - start
    print(
        f"ok    after the node loss: {answered} answered (as the direct service does), {failed} failed; Ray "
        f"declared the node dead after {declared_dead_s:.1f} s, then {streak} in a row; {took:.1f} s in all"
    )
    for line in first_failures:
        print(f"      failed: {line}")
    print(f"      nodes alive now: {sum(n['Alive'] for n in ray.nodes())}; replicas alive: {len(alive_replicas())}")


def check_graceful_shutdown(serve: str, app_name: str, clients: int) -> None:
    """Requests in flight when the application is deleted are answered, not cut: Ray stops routing to the
    replica, waits for what it holds (graceful_shutdown_*), then runs the app's lifespan shutdown."""
    heavy = {"sentences": [SCORE["sentences"][i % 2] for i in range(128)]}
    results: list[tuple[int, float]] = []

    def one() -> None:
        status, _ = post(serve, "/score", heavy, timeout=120)
        results.append((status, time.monotonic()))

    t0 = time.monotonic()
    if post(serve, "/score", heavy, timeout=120)[0] != 200:
        sys.exit("FAIL  a 128-sentence /score request was not answered before the shutdown check")
    one_s = time.monotonic() - t0
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(one_s)  # all have reached the replica, and most are still queued or running there
    began = time.monotonic()
    serve_api.delete(app_name)  # returns once the application is gone
    took = time.monotonic() - began
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in results)
    if statuses != [200] * clients:
        sys.exit(f"FAIL  requests in flight when the application was deleted: statuses {statuses}")
    late = sum(1 for _, done in results if done > began)
    if late == 0:
        sys.exit("FAIL  every request was answered before the delete began: the check proved nothing")
    print(
        f"ok    graceful shutdown: {clients} requests in flight, all answered 200 ({late} of them after the "
        f"delete began); the application was gone {took:.1f} s later"
    )
    status, _ = post(serve, "/score", SCORE, timeout=10)
    if status == 200:
        sys.exit("FAIL  the proxy still answers /score after the application was deleted")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ray", required=True, help="the head node's GCS address")
    p.add_argument("--serve", required=True, help="Ray's HTTP proxy")
    p.add_argument("--direct", required=True, help="the service run directly")
    p.add_argument("--second-node-port", type=int, required=True, help="node manager port of the node to kill")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    ray.init(address=args.ray, logging_level="ERROR", log_to_driver=False)  # replicas log to files
    check_replicas_on_two_nodes(deadline_s=120)
    check_same_answers(args.serve, args.direct, args.rounds)
    check_survives_node_loss(args.serve, args.direct, args.second_node_port, deadline_s=120, streak=10)
    check_graceful_shutdown(args.serve, "lmserve", clients=8)


if __name__ == "__main__":
    main()
