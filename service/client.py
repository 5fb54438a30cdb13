"""Score a text file over HTTP: `python -m service.client` (installed as `lm-score`).

    lm-score sentences.txt --url http://127.0.0.1:8000               # SRILM `ngram -ppl` summary
    lm-score sentences.txt --debug 1                                 # ... with one block per sentence
    cat sentences.txt | lm-score - --format jsonl --api-key "$KEY"   # JSON lines, then {"summary": ...}

One sentence per line (blank lines are skipped). The lines go to `/score` in chunks of the server's own
`max_sentences` (read from its OpenAPI schema), so any file size works; a 429 or 503 is retried after the
server's Retry-After. The numbers are those `trainer eval --text` gives locally for the same file.
Standard library only: it runs wherever Python does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

from lm.report import PerplexityTally, jsonl_summary, srilm_sentence, srilm_summary

API_KEY_ENV = "LMSERVE_API_KEY"
RETRY_STATUSES = (429, 503)


class ClientError(Exception):
    """The server refused the request or could not be reached: the message says which and why."""


class ScoringClient:
    """`/score` over HTTP with the server's limits, an API key, and retries of 429 and 503."""

    def __init__(
        self, url: str, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 10, max_wait_s: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_wait_s = max_wait_s

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer; retries 429/503 after Retry-After; ClientError for any other failure."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                if e.code in RETRY_STATUSES and attempt < self.retries:
                    time.sleep(retry_after(e.headers.get("Retry-After"), attempt, self.max_wait_s))
                    continue
                raise ClientError(f"{method} {path}: HTTP {e.code}: {error_message(e.read())}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise ClientError(f"{method} {path}: cannot reach {self.url} ({reason})") from None
            except (ValueError, http.client.HTTPException) as e:  # not a URL (InvalidURL), not HTTP, not JSON
                raise ClientError(f"{method} {self.url}{path}: {e}") from None
        raise AssertionError("unreachable")

    def max_sentences(self) -> int:
        """The server's `max_sentences`: the largest `sentences` list /score takes, as its OpenAPI schema says."""
        schema = self.request("GET", "/openapi.json")
        prop = schema["components"]["schemas"]["ScoreRequest"]["properties"]["sentences"]
        for branch in prop.get("anyOf", [prop]):
            if "maxItems" in branch:
                return int(branch["maxItems"])
        raise ClientError("the server's OpenAPI schema does not say how many sentences /score takes")

    def score(self, sentences: list[str], normalize: bool = True) -> list[dict]:
        """One `/score` call: a result per sentence."""
        body = {"sentences": sentences, "normalize": normalize}
        return self.request("POST", "/score", body)["results"]


def retry_after(header: str | None, attempt: int, cap_s: float) -> float:
    """Seconds to wait before retrying: the server's Retry-After (seconds), else a doubling backoff from 0.5 s."""
    try:
        wait = float(header) if header is not None else 0.5 * 2**attempt
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(max(wait, 0.0), cap_s)


def error_message(body: bytes) -> str:
    """The service's `error.message`, or the body's start when it is not the JSON envelope."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "(empty body)"


def sentence_lines(f: TextIO) -> Iterator[str]:
    """The file's non-blank lines, without their line ends."""
    for line in f:
        text = line.rstrip("\r\n")
        if text.strip():
            yield text


def chunked(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_stream(
    client: ScoringClient,
    f: TextIO,
    name: str,
    out: TextIO,
    fmt: str = "srilm",
    debug: int = 0,
    normalize: bool = True,
    chunk: int | None = None,
    progress: bool = False,
) -> dict:
    """Score every sentence of `f`, print the report to `out` and return the summary."""
    size = min(chunk, client.max_sentences()) if chunk else client.max_sentences()
    tally = PerplexityTally()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="sentence", file=sys.stderr, leave=False)
    for sentences in chunked(sentence_lines(f), size):
        for r in client.score(sentences, normalize):
            row = tally.add(r["text"], r["num_tokens"], r["oov"], r["logprob"])
            if fmt == "jsonl":
                print(json.dumps(row), file=out)
            elif debug:
                print(srilm_sentence(row), file=out)
        if bar is not None:
            bar.update(len(sentences))
    if bar is not None:
        bar.close()
    if tally.sentences == 0:
        raise ClientError(f"{name}: no sentences (every line is blank)")
    summary = tally.summary(name)
    print(jsonl_summary(summary) if fmt == "jsonl" else srilm_summary(summary), file=out)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lm-score", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("file", help="text file, one sentence per line; - for standard input")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer key (default: ${API_KEY_ENV})")
    p.add_argument("--format", choices=["srilm", "jsonl"], default="srilm", help="report format (default: srilm)")
    p.add_argument("--debug", type=int, choices=[0, 1], default=0, help="srilm: 1 adds one block per sentence")
    p.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, default=True, help="PTB-normalise the text (default)"
    )
    p.add_argument("--chunk", type=int, default=None, help="sentences per request (default: the server's maximum)")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a TTY)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--retries", type=int, default=10, help="retries of a 429 or 503 (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.chunk is not None and args.chunk < 1:
        print("error: --chunk must be at least 1", file=sys.stderr)
        return 2
    client = ScoringClient(args.url, args.api_key, args.timeout, args.retries)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        if args.file == "-":
            score_stream(
                client, sys.stdin, "-", sys.stdout, args.format, args.debug, args.normalize, args.chunk, progress
            )
        else:
            with open(args.file, encoding="utf-8") as f:
                score_stream(
                    client, f, args.file, sys.stdout, args.format, args.debug, args.normalize, args.chunk, progress
                )
    except (ClientError, OSError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
