"""Learning-curve plots (train and valid perplexity per epoch), written as PNG without a display."""

from __future__ import annotations

from pathlib import Path


def plot_learning_curves(runs: dict[str, list[dict]], path: str | Path) -> None:
    """`runs` maps a run name to its per-epoch records (`epoch`, `train_ppl`, `valid_ppl`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, (name, history) in enumerate(runs.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in history]
        ax.plot(epochs, [r["train_ppl"] for r in history], "--", color=color, label=f"{name} train")
        ax.plot(epochs, [r["valid_ppl"] for r in history], "-o", color=color, markersize=3, label=f"{name} valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("PTB word-level LSTM: learning curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
