"""What every benchmark shares: the machine's matmul ceiling, FLOP counts, medians, and docs/benchmarks.md.

Each benchmark measures the ceiling in its own run (the machine is shared and its speed drifts), prints its
tables, and replaces its own section of docs/benchmarks.md (between `<!-- begin NAME -->` and
`<!-- end NAME -->`), leaving the other sections as they are.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "benchmarks.md"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_DATA_DIR = Path(os.environ.get("PTB_DATA_DIR", REPO.parent / "shared" / "data" / "ptb"))


def ptb_test_sentences(data_dir: Path) -> list[str]:
    """The non-empty lines of ptb.test.txt, stripped: the sentences every benchmark sends."""
    text = (Path(data_dir) / "ptb.test.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_zipf_text(
    path: Path, tokens: int, seed: int, s: float, types: int, lengths: tuple[int, int], successor_p: float = 0.0
) -> int:
    """Write about `tokens` generated words to `path`, a sentence a line: words `w0`, `w1`, ... drawn from a
    Zipf law of exponent `s` over `types` types, sentences of `lengths` words (inclusive). With `successor_p`,
    each word after the first is, with that probability, the fixed successor of the word before it (a map
    drawn once from the same law), so there is context to learn while the unigram law stays Zipfian.
    Returns the words written."""
    import random
    from itertools import accumulate

    rng = random.Random(seed)
    cum = list(accumulate(1.0 / (r**s) for r in range(1, types + 1)))
    successor = random.Random(12345).choices(range(types), cum_weights=cum, k=types) if successor_p else []
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < tokens:
            n = rng.randint(*lengths)
            words = rng.choices(range(types), cum_weights=cum, k=n)
            if successor_p:
                for i in range(1, n):
                    if rng.random() < successor_p:
                        words[i] = successor[words[i - 1]]
            f.write(" ".join(f"w{w}" for w in words) + "\n")
            written += n
    return written


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Seconds per call of `fn`, `repeats` times (at least `min_seconds` in all), after one untimed call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a timer must wait for them."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20, device: torch.device | str = "cpu"
) -> float:
    """Median GFLOP/s of (m, k) @ (k, n) in `dtype` on `device` (the CPU at torch's thread count, or a GPU)."""
    a = torch.randn(m, k).to(device, dtype)
    b = torch.randn(k, n).to(device, dtype)
    out = torch.empty(m, n, dtype=dtype, device=device)

    def mm() -> None:
        torch.mm(a, b, out=out)
        synchronize(device)

    times = timed(mm, repeats, min_seconds=0.5)
    return 2 * m * k * n / median(times) / 1e9


def ceiling_gflops(
    shapes: Sequence[tuple[int, int, int]], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> tuple[float, tuple[int, int, int]]:
    """The best GFLOP/s of a matmul over `shapes` (m, k, n), and that shape: the machine's ceiling for a model
    whose matmuls have those shapes."""
    return max((matmul_gflops(m, k, n, dtype, device=device), (m, k, n)) for m, k, n in shapes)


def model_matmul_shapes(tokens: int, vocab: int, embed: int, hidden: int, training: bool) -> list[tuple[int, int, int]]:
    """The large matmuls of a pass over `tokens` positions: the decoder and the LSTM input projection; for
    training also the decoder's two gradients."""
    shapes = [(tokens, hidden, vocab), (tokens, embed, 4 * hidden)]
    if training:
        shapes += [(tokens, vocab, hidden), (hidden, tokens, vocab)]
    return shapes


def lstm_forward_flops(vocab: int, embed: int, hidden: int, layers: int) -> int:
    """Multiply-adds x 2 per token of the forward pass: each layer's four gates over [input; h] and the
    decoder over the vocabulary. Element-wise work (gate non-linearities, log-softmax) is not counted."""
    gates = sum(2 * 4 * hidden * ((embed if k == 0 else hidden) + hidden) for k in range(layers))
    return gates + 2 * hidden * vocab


def training_flops(vocab: int, embed: int, hidden: int, layers: int) -> int:
    """Per token of a training step: the forward pass and a backward pass of twice its matmul work."""
    return 3 * lstm_forward_flops(vocab, embed, hidden, layers)


def vector_isa(flags: set[str]) -> str:
    """The CPU's widest vector instructions, as they matter here: bf16 matmuls run natively only with AMX or
    AVX-512 bf16; without them bf16 is emulated."""
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return "AVX-512 with native bf16" + (" (AMX)" if "amx_bf16" in flags else "")
    if "avx512f" in flags:
        return "AVX-512, no native bf16"
    return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"


def machine() -> str:
    """The machine a figure comes from: CPU model and vector instructions, cores, torch and its threads."""
    cpu, isa = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (platform.processor(), platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not isa:
                isa = vector_isa(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    gpu = f"{torch.cuda.get_device_name(0)}, " if torch.cuda.is_available() else ""
    isa = f" ({isa})" if isa else ""
    return (
        f"{gpu}{cpu}{isa}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are given as the rows format them (pass strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this benchmark was run: `python -m benchmarks.NAME ARGS` (run from the repository root)."""
    args = " ".join(sys.argv[1:])
    module = ".".join(Path(sys.argv[0]).resolve().relative_to(REPO).with_suffix("").parts)
    return f"python -m {module}{' ' + args if args else ''}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foreign_threads() -> int:
    """This process's threads that Python did not start and that bear the process's name: OpenMP's workers (and
    OpenBLAS's, which numpy starts on import: count them before, as a baseline). Linux only (/proc)."""
    own = Path(f"/proc/self/task/{os.getpid()}/comm").read_text()
    names = [Path(f"/proc/self/task/{t}/comm").read_text() for t in os.listdir("/proc/self/task")]
    return names.count(own) - len(threading.enumerate())


def start_server(
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    module: Sequence[str] = ("service",),
) -> tuple[subprocess.Popen, str]:
    """`python -m service` as a user starts it (from the checkout `cwd`: its code and bundled model), on a free
    port of 127.0.0.1; returns once /readyz says ready. `module`: another module to run with the service's flags
    and its own first (`("benchmarks.instrumented", "--bare")`). The server logs at level `warning` (no access
    log) unless `env` sets LMSERVE_LOG_LEVEL."""
    import httpx

    port = free_port()
    quiet = [] if "LMSERVE_LOG_LEVEL" in (env or {}) else ["--log-level", "warning"]
    cmd = [sys.executable, "-m", *module, "--port", str(port), *quiet, *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")


def stop_server(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(60)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MiB from /proc: now (VmRSS), or its peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def write_section(name: str, title: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section `name` of the report with `title`, the command, the machine and `body`."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- begin {name} -->\n## {title}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine()}; run {stamp}.\n\n{body.strip()}\n"
        f"<!-- end {name} -->"
    )
    text = report.read_text(encoding="utf-8") if report.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text, encoding="utf-8")
    print(f"wrote section {name!r} of {report}")
