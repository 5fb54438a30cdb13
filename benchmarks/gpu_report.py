"""The report of a `benchmarks/gpu.sh` run: results.json and results.md from what its phases left in the work folder.

    python -m benchmarks.gpu_report --work runs/gpu --out runs/gpu/out --configs medium large --bench-config large

Reads phases.tsv (name, start, end, exit code), gpu-samples.csv (nvidia-smi every 0.5 s), ceiling.json,
models/ptb-CONFIG/{config.json,train_log.jsonl}, eval-CONFIG.txt, engine-CONFIG.txt and http-CONFIG.json, and
writes what each says, with the GPU utilisation of every phase, and README rows ready to paste. Nothing is
estimated here: a missing file is reported as missing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

from benchmarks.common import table
from lm.model import ModelConfig
from trainer.configs import get_config

EVAL_LINE = re.compile(r"^(train|valid|test): perplexity ([\d.]+) over ([\d,]+) predictions", re.M)


def read_phases(work: Path) -> list[dict]:
    rows = []
    path = work / "phases.tsv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, t0, t1, rc = line.split("\t")
            rows.append({"phase": name, "start": float(t0), "end": float(t1), "exit_code": int(rc)})
    return rows


def read_samples(work: Path) -> list[tuple[float, float, float]]:
    """(unix time, GPU utilisation %, memory used MiB) of each nvidia-smi sample (its local-time timestamps)."""
    samples = []
    path = work / "gpu-samples.csv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.split(",")]
            try:
                t = time.mktime(time.strptime(cells[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
                t += float("0." + cells[0].split(".")[1]) if "." in cells[0] else 0.0
                samples.append((t, float(cells[1]), float(cells[3])))
            except (IndexError, ValueError):
                continue  # a header, or "[N/A]"
    return samples


def utilisation(samples: list[tuple[float, float, float]], start: float, end: float) -> dict | None:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    return {
        "samples": len(inside),
        "gpu_util_mean": round(sum(s[1] for s in inside) / len(inside), 1),
        "gpu_util_max": max(s[1] for s in inside),
        "memory_used_max_mib": max(s[2] for s in inside),
    }


def parameters(meta: dict) -> int:
    config = ModelConfig.from_dict(meta)
    shapes = config.tensor_shapes()
    total = sum(math.prod(shape) for shape in shapes.values())
    return total - (math.prod(shapes["decoder.weight"]) if config.tie_weights else 0)


def training(work: Path, name: str) -> dict:
    """What the run of config `name` has done: epochs, best epoch, speed, and whether it finished."""
    d = work / "models" / f"ptb-{name}"
    if not (d / "config.json").is_file():
        return {"config": name, "checkpoint": False}
    meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    log_path = d / "train_log.jsonl"
    log = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines() if x] if log_path.is_file() else []
    metrics = meta.get("metrics", {})
    return {
        "config": name,
        "checkpoint": True,
        "parameters": parameters(meta),
        "device": meta.get("training", {}).get("device"),
        "torch": meta.get("training", {}).get("torch"),
        "epochs_completed": len(log),
        "epochs_planned": meta.get("training", {}).get("max_epochs_run") or get_config(name).max_epochs,
        "finished": "test_ppl" in metrics,
        "best_epoch": metrics.get("best_epoch"),
        "train_ppl": metrics.get("train_ppl"),
        "valid_ppl": metrics.get("valid_ppl"),
        "test_ppl": metrics.get("test_ppl"),
        "wall_time_s": round(sum(r["epoch_time_s"] for r in log), 1),
        "mean_epoch_s": round(sum(r["epoch_time_s"] for r in log) / len(log), 2) if log else None,
        "mean_train_tokens_per_s": round(sum(r["train_tokens_per_s"] for r in log) / len(log)) if log else None,
    }


def evaluation(work: Path, name: str) -> dict:
    path = work / f"eval-{name}.txt"
    if not path.is_file():
        return {}
    return {
        split: {"perplexity": float(ppl), "predictions": int(n.replace(",", ""))}
        for split, ppl, n in EVAL_LINE.findall(path.read_text(encoding="utf-8"))
    }


def build(work: Path, configs: list[str], bench_config: str, device: str, dry_run: bool) -> dict:
    samples = read_samples(work)
    phases = [{**p, "seconds": round(p["end"] - p["start"], 1), **{"gpu": utilisation(samples, p["start"], p["end"])}}
              for p in read_phases(work)]  # fmt: skip
    read = lambda name: json.loads((work / name).read_text(encoding="utf-8")) if (work / name).is_file() else None  # noqa: E731
    engine = work / f"engine-{bench_config}.txt"
    return {
        "dry_run": dry_run,
        "device": device,
        "phases": phases,
        "ceiling": read("ceiling.json"),
        "training": [training(work, c) for c in configs],
        "evaluation": {c: evaluation(work, c) for c in configs},
        "bench_config": bench_config,
        "engine": engine.read_text(encoding="utf-8") if engine.is_file() else None,
        "http": read(f"http-{bench_config}.json"),
    }


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "" if x is None else format(x, spec)


def markdown(r: dict) -> str:
    dry = " (DRY RUN on the CPU: tiny settings, no figure here means anything)" if r["dry_run"] else ""
    out = ["# GPU run" + dry]
    if r["ceiling"]:
        c = r["ceiling"]
        out.append(f"Machine: {c['machine']}. Matmul ceiling ({'x'.join(map(str, c['shape']))}): " + ", ".join(
            f"{k} {v:,.0f} GFLOP/s" for k, v in c["gflops"].items()))  # fmt: skip
    rows = []
    for p in r["phases"]:
        g = p["gpu"] or {}
        rows.append([p["phase"], f"{p['seconds']:.0f}", str(p["exit_code"]), _fmt(g.get("gpu_util_mean"), ".0f"),
                     _fmt(g.get("gpu_util_max"), ".0f"), _fmt(g.get("memory_used_max_mib"), ",.0f")])  # fmt: skip
    out.append("## Phases\n\n" + table(["phase", "s", "exit", "GPU util mean %", "max %", "GPU memory max MiB"], rows))
    rows = []
    for t in r["training"]:
        if not t["checkpoint"]:
            rows.append([t["config"], "no checkpoint", "", "", "", "", "", ""])
            continue
        done = f"{t['epochs_completed']} of {t['epochs_planned']}" + ("" if t["finished"] else " (stopped)")
        rows.append([t["config"], done, str(t["best_epoch"]), _fmt(t["train_ppl"]), _fmt(t["valid_ppl"]),
                     _fmt(t["mean_epoch_s"], ".1f"), _fmt(t["mean_train_tokens_per_s"], ",.0f"),
                     f"{t['wall_time_s']:,.0f}"])  # fmt: skip
    out.append("## Training\n\n" + table(["config", "epochs", "best", "train ppl", "valid ppl", "s/epoch",
                                         "tokens/s", "wall s"], rows))  # fmt: skip
    rows = [[c, *(_fmt(e.get(s, {}).get("perplexity"), ".3f") for s in ("train", "valid", "test"))]
            for c, e in r["evaluation"].items()]  # fmt: skip
    out.append("## Evaluation of the best checkpoints (`python -m trainer eval --split all`)\n\n"
               + table(["config", "train", "valid", "test"], rows))  # fmt: skip
    readme = []
    for t in r["training"]:
        e = r["evaluation"].get(t["config"], {})
        if t["checkpoint"] and e:
            readme.append(
                f"| {t['config']} | {t['parameters']:,} | {r['device']}, float32 | {t['wall_time_s'] / 60:.0f} min | "
                f"{t['epochs_completed']} | {_fmt(t['train_ppl'])} | **{_fmt(e.get('valid', {}).get('perplexity'))}**"
                f" | **{_fmt(e.get('test', {}).get('perplexity'))}** |"
            )
    if readme:
        out.append("README rows (the first columns of its results table):\n\n" + "\n".join(readme))
    if r["engine"]:
        out.append(f"## Engine benchmark, `{r['bench_config']}`\n\n```\n{r['engine'].strip()}\n```")
    if r["http"]:
        rows = [[x["endpoint"], str(x["concurrency"]), f"{x['rps']:,.1f}", f"{x['p50_us'] / 1000:.1f}",
                 f"{x['p99_us'] / 1000:.1f}", f"{x['mean_batch']:.1f}", str(x["busy"]), str(x["errors"])]
                for x in r["http"]["runs"]]  # fmt: skip
        out.append(f"## HTTP load, `{r['bench_config']}` served on {r['http']['device']}\n\n"
                   + table(["endpoint", "conc.", "answered/s", "p50 ms", "p99 ms", "mean batch", "429", "errors"],
                           rows))  # fmt: skip
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--bench-config", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    result = build(args.work, args.configs, args.bench_config, args.device, args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
