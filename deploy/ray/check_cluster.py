"""Checks of the Ray Serve application on a running two-node cluster; deploy/ray/test-cluster.sh runs it inside
its namespaces once the application and a directly started service answer.

    python deploy/ray/check_cluster.py --ray 127.0.0.1:6379 --serve http://127.0.0.1:8000 \
        --direct http://127.0.0.1:8001 --second-node-port 6390

1. Two replicas are alive, on two different nodes.
2. /score and /next-word through Ray's proxy give the JSON the service run directly gives, to the last digit.
3. The second node's processes are killed (its raylet and everything under it, as a crashed machine would
   lose them): requests through the proxy go on being answered by the replica left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

import ray
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


def check_survives_node_loss(serve: str, node_manager_port: int, deadline_s: float, streak: int) -> None:
    pids = descendants(raylet_pid(node_manager_port))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    print(f"      killed the second node: its raylet and {len(pids) - 1} processes under it")
    start = time.monotonic()
    answered = failed = in_a_row = 0
    first_failures: list[str] = []
    while in_a_row < streak:
        if time.monotonic() - start > deadline_s:
            sys.exit(f"FAIL  {answered} answered, {failed} failed, no {streak} in a row within {deadline_s:g} s")
        status, body = post(serve, "/score", SCORE)
        if status == 200:
            answered, in_a_row = answered + 1, in_a_row + 1
        else:
            failed, in_a_row = failed + 1, 0
            if len(first_failures) < 3:
                first_failures.append(f"{status} {body!r}"[:200])
            time.sleep(0.5)
    took = time.monotonic() - start
    print(
        f"ok    after the node loss: {answered} answered, {failed} failed while Ray noticed, then {streak} in a "
        f"row; {took:.1f} s"
    )
    for line in first_failures:
        print(f"      failed: {line}")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(f"      nodes alive now: {len(nodes)}; replicas alive: {len(alive_replicas())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ray", required=True, help="the head node's GCS address")
    p.add_argument("--serve", required=True, help="Ray's HTTP proxy")
    p.add_argument("--direct", required=True, help="the service run directly")
    p.add_argument("--second-node-port", type=int, required=True, help="node manager port of the node to kill")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    ray.init(address=args.ray, logging_level="ERROR")
    check_replicas_on_two_nodes(deadline_s=120)
    check_same_answers(args.serve, args.direct, args.rounds)
    check_survives_node_loss(args.serve, args.second_node_port, deadline_s=120, streak=10)


if __name__ == "__main__":
    main()
