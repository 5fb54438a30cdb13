"""The device's own matmul ceiling, fp32 and bf16: one large square product, as GFLOP/s (JSON on stdout).

    python -m benchmarks.ceiling --device cuda --size 8192 --json runs/gpu/ceiling.json

The benchmarks' "of ceiling" columns use the shapes of the model's own matmuls; this is the device's peak for
the record, measured in the same run as the other GPU figures. fp32 is as PyTorch runs it by default (no TF32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DTYPES, machine, matmul_gflops
from lm.model import resolve_device


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--size", type=int, default=8192, help="m = k = n of the product")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    n = args.size
    result = {
        "device": str(device),
        "machine": machine(),
        "shape": [n, n, n],
        "gflops": {
            name: round(matmul_gflops(n, n, n, dtype, args.repeats, device), 1) for name, dtype in DTYPES.items()
        },
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
