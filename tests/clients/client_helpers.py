"""Helpers of the client tests: where the model and the PTB data are, and the service's own answers."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("CLIENTS_MODEL", REPO / "models" / "ptb-cpu"))


def ptb_test_file() -> Path:
    """$PTB_DATA_DIR/ptb.test.txt (default ../shared/data/ptb, relative to the repository root)."""
    path = Path(os.environ.get("PTB_DATA_DIR", "../shared/data/ptb")).expanduser()
    return (path if path.is_absolute() else REPO / path).resolve() / "ptb.test.txt"


def score(server: str, texts: list[str], add_eos: bool = False) -> list[dict]:
    """/score's per-token results for each text (no final <eos> unless asked)."""
    r = httpx.post(server + "/score", json={"sentences": texts, "per_token": True, "add_eos": add_eos}, timeout=60)
    r.raise_for_status()
    return r.json()["results"]


def next_word(server: str, prefix: str, top_k: int = 1) -> dict:
    """/next-word's result for one prefix."""
    r = httpx.post(server + "/next-word", json={"prefix": prefix, "top_k": top_k}, timeout=60)
    r.raise_for_status()
    return r.json()["results"][0]
