"""`python -m trainer` for a torchrun worker, with what the data-parallel tests set inside each process: a
config override (dropout, so that each rank's dropout masks matter) and, optionally, a Ctrl-C at a window.

    torchrun --nproc_per_node 2 ... tests/unit/trainer/ddp_run.py --dropout 0.3 --interrupt 2:3 -- train ...

The interrupt raises KeyboardInterrupt on every rank at window W of epoch E (before that window's step, so
no rank waits on another), as Ctrl-C does to a terminal's process group.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch

import trainer.cli
import trainer.train as train_module
from trainer.configs import get_config


def interrupting_windows(epochs_started: list[int], epoch: int, window: int):
    """A stand-in for trainer.data.windows that raises KeyboardInterrupt (Ctrl-C) at `window` of `epoch`
    (also what the single-process resume test interrupts with)."""
    real_windows = train_module.windows

    def windows(batched: torch.Tensor, num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epochs_started.append(1)
        for i, item in enumerate(real_windows(batched, num_steps)):
            if len(epochs_started) == epoch and i == window:
                raise KeyboardInterrupt
            yield item

    return windows


def main() -> int:
    split = sys.argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--interrupt", default=None, help="EPOCH:WINDOW")
    args = p.parse_args(sys.argv[1:split])
    trainer.cli.get_config = lambda name, **kw: get_config(name, dropout=args.dropout, **kw)
    if args.interrupt:
        epoch, window = (int(x) for x in args.interrupt.split(":"))
        train_module.windows = interrupting_windows([], epoch, window)
    return trainer.cli.main(sys.argv[split + 1 :])


if __name__ == "__main__":
    raise SystemExit(main())
