"""The clients people already use, against the real service: a server process started as a user starts it
(`python -m service`, the bundled model, a free port of 127.0.0.1), and the service's own answers as reference.

`make clients` (part of `make test`) runs these; they need the `openai` and `lm-eval` packages (the dev extra).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_helpers import MODEL

from benchmarks.common import start_server, stop_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """The service's base URL; stopped at the end of the session."""
    proc, base = start_server(["--model", str(MODEL)], env={"LMSERVE_THREADS": "1"})
    try:
        yield base
    finally:
        stop_server(proc)
