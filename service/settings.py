"""Service settings: every field comes from an `LMSERVE_`-prefixed environment variable, each default serves.

LMSERVE_MODEL=models/ptb-cpu LMSERVE_MAX_WAIT_MS=2 python -m service
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = Path("models/ptb-cpu")
HOUR_S = 3600.0


class Settings(BaseSettings):
    """Everything the service can be told; `python -m service --help` maps flags onto the same names."""

    # Non-finite numbers (`inf`, `nan`) are refused everywhere: `LMSERVE_MAX_WAIT_MS=inf` would hang a batch.
    model_config = SettingsConfigDict(env_prefix="LMSERVE_", extra="ignore", allow_inf_nan=False)

    # Model and hardware
    model: Path = Field(DEFAULT_MODEL, description="checkpoint directory to serve")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cuda when present with auto")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and activations; the log-softmax is always float32"
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads the forward passes share (default: torch's choice); the rest of the "
        "service runs torch on one",
    )
    forward_lanes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="forward passes that may run at once, each in its own thread with its share of the torch "
        "threads (threads / lanes); several lanes keep a busy CPU working when HTTP work interrupts one pass "
        "(default: 2 on a CPU with two or more torch threads, 1 on a GPU or with one thread)",
    )

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256, description="uvicorn worker processes, each with its own model and engine")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    graceful_timeout_s: float = Field(
        30.0, gt=0, le=HOUR_S, description="on SIGTERM, how long requests in flight may take"
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        le=HOUR_S,
        description="on SIGTERM, serve this long with /readyz at 503 before closing (load balancers)",
    )

    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed (the access "
        "log's client); empty: nobody's",
    )

    # Access
    api_key: SecretStr | None = Field(
        None, description="if set, /score, /next-word, /model and the OpenAI routes need this bearer key"
    )
    metrics_require_key: bool = Field(False, description="put /metrics behind the API key too")

    # Batching engine
    max_batch_sequences: int = Field(64, ge=1, description="sequences per forward pass at most")
    max_batch_tokens: int = Field(
        4096,
        ge=1,
        description="padded tokens (rows x longest) per forward pass at most (a longer item runs alone): bounds "
        "how long a batch holds the model, and so how long a newly arrived request waits",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="how long the oldest queued item may wait for company (not at all while calls come further apart)",
    )
    max_queue: int = Field(2048, ge=1, description="queued sequences at most; beyond that requests get 429")
    max_chunk_tokens: int = Field(8192, ge=1, description="time steps x batch rows per LSTM chunk (bounds memory)")
    prefix_cache_entries: int = Field(
        4096,
        ge=0,
        description="LSTM states of recent /next-word prefixes kept, so a prefix extended by a word costs one "
        "step (type-ahead); one entry is 2 x layers x hidden numbers (4.8 KB for ptb-cpu); 0 turns it off",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=HOUR_S, description="a request still unanswered after this gets 504"
    )
    retry_after_s: int = Field(1, ge=0, le=3600, description="the Retry-After header sent with 429")
    busy_delay_ms: float = Field(
        200.0,
        ge=0,
        le=10_000,
        description="a 429 is answered after this long: clients that retry at once, ignoring Retry-After, "
        "cannot spin the server's CPU away from the forward pass",
    )

    gc_threshold: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="after startup, what startup built is frozen out of Python's garbage collector and its first "
        "generation is collected after this many new objects (Python's default: 700); 0 leaves the collector "
        "as Python sets it",
    )

    # Request limits (each enforced before any work is queued)
    max_sentences: int = Field(256, ge=1, description="sentences (or prefixes) per request")
    max_chars: int = Field(20000, ge=1, description="characters per sentence or prefix")
    max_tokens: int = Field(4096, ge=1, description="tokens per sentence or prefix, after normalisation")
    max_request_tokens: int = Field(
        65_536,
        ge=1,
        description="tokens one request may send to the model, all its sentences, prefixes or prompts together "
        "(422 beyond: split it); bounds the work one request can hold the model with",
    )
    max_top_k: int = Field(100, ge=1, description="largest top_k of /next-word (and logprobs of /v1/completions)")
    max_new_tokens: int = Field(256, ge=1, description="words one /v1/completions prompt may generate (max_tokens)")
    max_candidates: int = Field(100, ge=1, description="candidates per /next-word request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1, description="request body size; larger bodies get 413")
    body_timeout_s: float = Field(
        10.0, gt=0, le=HOUR_S, description="a request body of which nothing more comes for this long gets 408"
    )
    max_answer_words: int = Field(
        25_600,
        ge=1,
        description="words one /next-word answer may list: prefixes x (top_k + candidates); "
        "bounds the answer's size (422 beyond)",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, key: SecretStr | None) -> SecretStr | None:
        """An empty key, or one with spaces around it, cannot be what the operator meant: refused at start."""
        if key is None:
            return None
        value = key.get_secret_value()
        if not value:
            raise ValueError("is empty: unset LMSERVE_API_KEY to serve without a key, or give a key")
        if value != value.strip():
            raise ValueError("has spaces or a newline around it (clients could never send it): remove them")
        return key


def settings_error(error: ValidationError) -> str:
    """A refused setting as one line: which variable, what was wrong, what value was given (never a key)."""
    problems = []
    for e in error.errors():
        name = "LMSERVE_" + "_".join(str(p) for p in e["loc"]).upper()
        given = "" if "api_key" in e["loc"] else f" (given {e.get('input')!r})"
        problems.append(f"{name}{given}: {e['msg'].removeprefix('Value error, ')}")
    return "invalid setting " + "; ".join(problems)
