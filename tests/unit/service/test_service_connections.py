"""What a connection may cost before its request reaches the app, against a real `python -m service`: a huge or
many-fielded request head is refused (431) and closed, a head that never finishes or never starts is closed
after LMSERVE_BODY_TIMEOUT_S, an idle keep-alive connection is closed, and none of it slows a SIGTERM down."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
from service_helpers import start_server

from benchmarks.common import rss_mib
from service.connection import KEEP_ALIVE_S, MAX_HEADERS


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (AssertionError if it has not by `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout} s; got {data[:200]!r}") from None
    return data


def test_huge_unfinished_header_is_refused_with_bounded_memory(service_ckpt) -> None:
    proc, base = start_server(service_ckpt.path)
    try:
        before = rss_mib(proc.pid)
        sock = connect(base)
        sent = 0
        chunk = b"a" * (1 << 20)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        try:
            while sent < 40 * (1 << 20):
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock, 5)
        sock.close()
        assert sent < 40 * (1 << 20), "the server read all 40 MB of an unfinished header"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert rss_mib(proc.pid) - before < 20
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_too_many_header_fields_get_431_in_the_json_envelope(service_ckpt) -> None:
    proc, base = start_server(service_ckpt.path)
    try:
        sock = connect(base)
        fields = b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n")
        answer = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "header_too_large"
        # A head under the cap still serves.
        ok = httpx.get(base + "/healthz", headers={f"x-{i}": "1" for i in range(MAX_HEADERS - 10)}, timeout=5)
        assert ok.status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_stalled_and_silent_connections_are_closed_after_the_timeout(service_ckpt) -> None:
    proc, base = start_server(service_ckpt.path, LMSERVE_BODY_TIMEOUT_S="1")
    try:
        stalled = [connect(base) for _ in range(40)]
        for sock in stalled:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: a")
        silent = [connect(base) for _ in range(10)]
        start = time.monotonic()
        for sock in stalled:
            answer = read_until_closed(sock, 4)
            assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer, answer[:200]
        for sock in silent:
            assert read_until_closed(sock, 4) == b""
        assert time.monotonic() - start < 4
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_an_idle_keep_alive_connection_is_closed(service_ckpt) -> None:
    proc, base = start_server(service_ckpt.path)
    try:
        sock = connect(base)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        start = time.monotonic()
        answer = read_until_closed(sock, KEEP_ALIVE_S + 3)
        assert answer.startswith(b"HTTP/1.1 200")
        assert KEEP_ALIVE_S - 0.5 < time.monotonic() - start < KEEP_ALIVE_S + 3
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_with_idle_and_stalled_connections_open_exits_promptly(service_ckpt) -> None:
    """Open connections that carry no request must not hold the exit for the graceful timeout (20 s here); the
    bound leaves room for the interpreter's own exit (2-4 s with torch loaded, on a shared 2-core machine)."""
    proc, base = start_server(service_ckpt.path, LMSERVE_GRACEFUL_TIMEOUT_S="20")
    try:
        idle = connect(base)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        stalled = connect(base)
        stalled.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: a")
        silent = connect(base)
        time.sleep(0.2)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - start < 10
        for sock in (idle, stalled, silent):
            sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
