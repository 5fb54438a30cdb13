"""The HTTP scoring client (`python -m service.client`, `lm-score`): against a real server it prints the numbers
`trainer eval --text` prints for the same file; against a stub it chunks by the server's limit, retries a 429
after Retry-After and sends the API key."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from tiny_models import TinyCheckpoint

from benchmarks.common import start_server, stop_server
from lm.report import srilm_block
from service import client as client_module
from service.client import main as client_main
from trainer.cli import main as trainer_main

RAW = [
    "The company said profits rose 5% to $30 million.",
    "Mr. Smith didn't say.",
    "",
    "the stock market rose",
    "Investors' funds fell 3.5% last week, the bank said.",
    "...",
]


@pytest.fixture(scope="module")
def server(service_ckpt: TinyCheckpoint) -> Iterator[str]:
    proc, base = start_server(["--model", str(service_ckpt.path)], env={"LMSERVE_THREADS": "1"})
    try:
        yield base
    finally:
        stop_server(proc)


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(RAW) + "\n", encoding="utf-8")
    return path


def jsonl(out: str) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in out.strip().splitlines()]
    return rows[:-1], rows[-1]["summary"]


def test_client_and_trainer_eval_give_the_same_numbers(capsys, server, service_ckpt, raw_file) -> None:
    """The service normalises raw text; `trainer eval --text` does too by default: same file, same numbers."""
    assert client_main([str(raw_file), "--url", server, "--format", "jsonl", "--chunk", "2"]) == 0
    remote_rows, remote = jsonl(capsys.readouterr().out)
    assert trainer_main(["eval", "--model", str(service_ckpt.path), "--text", str(raw_file), "--per-sentence",
                         "--format", "jsonl", "--device", "cpu"]) == 0  # fmt: skip
    local_rows, local = jsonl(capsys.readouterr().out)
    assert len(remote_rows) == len(local_rows) == 5  # the blank line is skipped; "..." is a sentence of no words
    for r, lo in zip(remote_rows, local_rows, strict=True):
        assert (r["text"], r["num_tokens"], r["words"], r["oov"]) == (
            lo["text"],
            lo["num_tokens"],
            lo["words"],
            lo["oov"],
        )
        assert r["logprob"] == pytest.approx(lo["logprob"], abs=1e-4)
    for key in ("sentences", "words", "oov", "num_tokens"):
        assert remote[key] == local[key]
    assert remote["perplexity"] == pytest.approx(local["perplexity"], rel=1e-6)
    # And both equal /score's own perplexity for the first sentence.
    import httpx

    first = httpx.post(server + "/score", json={"text": RAW[0]}, timeout=10).json()["results"][0]
    assert remote_rows[0]["perplexity"] == pytest.approx(first["perplexity"], rel=1e-9)


def test_without_normalisation_the_trainer_reads_words_as_written(capsys, service_ckpt, raw_file) -> None:
    """The cause of the old disagreement: split on spaces, "The", "5%" and "million." are all <unk>."""
    args = ["eval", "--model", str(service_ckpt.path), "--text", str(raw_file), "--format", "jsonl", "--device", "cpu"]
    assert trainer_main(args) == 0
    normalised = jsonl(capsys.readouterr().out)[1]
    assert trainer_main([*args, "--no-normalize"]) == 0
    split = jsonl(capsys.readouterr().out)[1]
    assert split["oov"] > normalised["oov"] + 5


def test_srilm_report_per_sentence_and_for_the_file(capsys, server, raw_file) -> None:
    assert client_main([str(raw_file), "--url", server, "--debug", "1"]) == 0
    out = capsys.readouterr().out
    assert client_main([str(raw_file), "--url", server, "--format", "jsonl"]) == 0
    rows, summary = jsonl(capsys.readouterr().out)
    blocks = out.strip().split("\n\n")
    assert len(blocks) == len(rows) + 1
    for block, row in zip(blocks[:-1], rows, strict=True):
        text, counts, probs = block.split("\n")
        assert text == row["text"]
        assert counts == f"1 sentences, {row['words']} words, {row['num_oov']} OOVs"
        assert probs.startswith(f"0 zeroprobs, logprob= {row['log10prob']:.6g} ppl= ")
    file_block = blocks[-1]
    assert file_block.startswith(f"file {raw_file}: 5 sentences, {summary['words']} words, {summary['oov']} OOVs\n")
    ppl = float(file_block.split("ppl= ")[1].split()[0])
    assert ppl == pytest.approx(summary["perplexity"], rel=1e-5)  # every prediction counted, as /score counts
    ppl1 = float(file_block.split("ppl1= ")[1])
    assert ppl1 == pytest.approx(10 ** (-summary["log10prob"] / summary["words"]), rel=1e-5)


def test_srilm_block_formulas() -> None:
    block = srilm_block("file f: ", 2, 10, 1, -24.0)
    assert block == "file f: 2 sentences, 10 words, 1 OOVs\n0 zeroprobs, logprob= -24 ppl= 100 ppl1= 251.189"
    assert math.isclose(10 ** (24 / 12), 100)


def test_standard_input_and_errors(capsys, monkeypatch, server, tmp_path: Path) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the stock market rose\n"))
    assert client_main(["-", "--url", server, "--format", "jsonl"]) == 0
    _, summary = jsonl(capsys.readouterr().out)
    assert summary["file"] == "-" and summary["sentences"] == 1
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    assert client_main([str(blank), "--url", server]) == 2
    assert "no sentences" in capsys.readouterr().err
    assert client_main([str(tmp_path / "missing.txt"), "--url", server]) == 2
    assert "missing.txt" in capsys.readouterr().err
    for url in ("http://127.0.0.1:--port", "http://127.0.0.1:1"):  # not a URL; nobody listening
        assert client_main([str(blank), "--url", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
    # A sentence over the server's max_chars: the server's own message, no traceback.
    long = tmp_path / "long.txt"
    long.write_text("word " * 5000 + "\n", encoding="utf-8")
    assert client_main([str(long), "--url", server]) == 2
    err = capsys.readouterr().err
    assert "HTTP 422" in err and "at most" in err and "Traceback" not in err


class Stub(BaseHTTPRequestHandler):
    """A server that takes 2 sentences per request, refuses the first /score with 429, and records calls."""

    calls: ClassVar[list[tuple[str, dict | None, str | None]]] = []
    refused: ClassVar[bool] = False

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        Stub.calls.append((self.path, None, self.headers.get("authorization")))
        schema = {"components": {"schemas": {"ScoreRequest": {"properties": {"sentences": {"anyOf": [
            {"type": "array", "maxItems": 2}, {"type": "null"}]}}}}}}  # fmt: skip
        self.reply(200, schema)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Stub.calls.append((self.path, body, self.headers.get("authorization")))
        if not Stub.refused:
            Stub.refused = True
            self.reply(429, {"error": {"code": "queue_full", "message": "busy"}}, {"Retry-After": "3"})
            return
        results = [{"text": t, "num_tokens": 2, "oov": [], "logprob": -2.0} for t in body["sentences"]]
        self.reply(200, {"model": "stub", "results": results})


def test_chunks_by_the_server_limit_retries_429_after_retry_after_and_sends_the_key(capsys, monkeypatch, tmp_path):
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    monkeypatch.setenv("LMSERVE_API_KEY", "s3cret")
    path = tmp_path / "five.txt"
    path.write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    try:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        assert client_main([str(path), "--url", url, "--format", "jsonl"]) == 0
    finally:
        stub.shutdown()
    posts = [body["sentences"] for p, body, _ in Stub.calls if p == "/score"]
    assert posts == [["a", "b"], ["a", "b"], ["c", "d"], ["e"]]  # the refused chunk is sent again
    assert slept == [3.0]
    assert {auth for _, _, auth in Stub.calls} == {"Bearer s3cret"}
    rows, summary = jsonl(capsys.readouterr().out)
    assert [r["text"] for r in rows] == ["a", "b", "c", "d", "e"] and summary["logprob"] == -10.0
