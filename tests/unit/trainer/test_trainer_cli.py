"""The command line: `python -m trainer ...` exit codes, one-line errors, eval and train end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import trainer.train as train_module
from lm.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from trainer.cli import main
from trainer.train import DRY_RUN_EVAL_TOKENS


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


@pytest.fixture
def wrong_shape_checkpoint(tiny_checkpoint) -> Path:
    """A checkpoint whose weights (with a matching sha256) hold a tensor of the wrong shape."""
    path = tiny_checkpoint.path
    tensors = load_file(str(path / "model.safetensors"))
    tensors["decoder.weight"] = tensors["decoder.weight"][:, :-2].contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    meta["weights_sha256"] = sha256_file(path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


def test_train_with_missing_data_dir(capsys, tmp_path: Path) -> None:
    code, out, err = run_cli(
        capsys, "train", "--config", "test", "--data-dir", tmp_path / "nope", "--out", tmp_path / "run"
    )
    assert code == 2
    assert out == ""
    assert_one_line_error(err, "no such data directory", str(tmp_path / "nope"))


def test_train_with_unknown_config(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--config", "huge", "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, "unknown config 'huge'", "small")
    assert not (tmp_path / "run").exists()


def test_train_with_bad_max_epochs(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--config", "test", "--out", tmp_path / "run", "--max-epochs", "0")
    assert code == 2
    assert_one_line_error(err, "--max-epochs")


def test_eval_of_a_checkpoint_with_a_wrong_tensor_shape(capsys, wrong_shape_checkpoint: Path, fake_ptb_dir) -> None:
    code, out, err = run_cli(capsys, "eval", "--model", wrong_shape_checkpoint, "--data-dir", fake_ptb_dir)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, "model.safetensors", "decoder.weight", "shape")


def test_eval_of_a_missing_checkpoint(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "eval", "--model", tmp_path / "none")
    assert code == 2
    assert_one_line_error(err, "no such checkpoint directory")


def test_eval_split_with_a_data_dir_of_another_vocabulary(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    data = tmp_path / "other"
    data.mkdir()
    (data / "ptb.test.txt").write_text("the cat sat\nthe aardvark ate a mat\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "eval", "--model", tiny_checkpoint.path, "--data-dir", data, "--split", "test")
    assert code == 2
    assert out == ""
    assert_one_line_error(err, "ptb.test.txt", "not in the vocabulary", "'aardvark'", "'ate'")


def test_eval_split_with_missing_data_dir(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys, "eval", "--model", tiny_checkpoint.path, "--data-dir", tmp_path / "nope", "--split", "valid"
    )
    assert code == 2
    assert_one_line_error(err, "ptb.valid.txt", "no such file")


def test_eval_all_splits(capsys, tiny_checkpoint, fake_ptb_dir: Path) -> None:
    code, out, err = run_cli(
        capsys, "eval", "--model", tiny_checkpoint.path, "--data-dir", fake_ptb_dir, "--split", "all"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["train", "valid", "test"]
    for line, split in zip(lines, ("train", "valid", "test"), strict=True):
        tokens = sum(len(s.split()) + 1 for s in (fake_ptb_dir / f"ptb.{split}.txt").read_text().splitlines())
        assert f"over {tokens - 1:,} predictions" in line


SENTENCES = ["the cat sat on the mat", "a dog ran", "the zebra sat"]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text(f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n{SENTENCES[2]}\n", encoding="utf-8")
    return path


def test_eval_text_per_sentence(capsys, tiny_checkpoint, text_file: Path) -> None:
    code, out, err = run_cli(capsys, "eval", "--model", tiny_checkpoint.path, "--text", text_file, "--per-sentence")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(SENTENCES) + 2  # one per sentence (the empty line skipped), then a two-line summary
    for line, sentence in zip(lines[: len(SENTENCES)], SENTENCES, strict=True):
        assert line.startswith("logprob")
        assert line.endswith(sentence)
    assert "oov  1" in lines[2]  # "zebra"
    words = sum(len(s.split()) for s in SENTENCES)  # 12
    assert f"3 sentences, {words} words, 1 OOVs" in lines[3]
    assert f"predictions {words + len(SENTENCES)} " in lines[4]  # every word and each sentence's <eos>


def test_eval_text_jsonl(capsys, tiny_checkpoint, text_file: Path) -> None:
    code, out, err = run_cli(
        capsys, "eval", "--model", tiny_checkpoint.path, "--text", text_file, "--per-sentence", "--format", "jsonl"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == len(SENTENCES) + 1
    sentences, summary = rows[:-1], rows[-1]["summary"]
    assert [r["text"] for r in sentences] == SENTENCES
    assert [r["num_tokens"] for r in sentences] == [len(s.split()) + 1 for s in SENTENCES]
    assert [r["oov"] for r in sentences] == [[], [], ["zebra"]]
    assert summary["num_tokens"] == sum(r["num_tokens"] for r in sentences)
    assert math.isclose(summary["logprob"], sum(r["logprob"] for r in sentences), rel_tol=1e-12)
    assert math.isclose(summary["perplexity"], math.exp(-summary["logprob"] / summary["num_tokens"]), rel_tol=1e-12)
    assert math.isclose(summary["log10prob"], summary["logprob"] / math.log(10), rel_tol=1e-12)
    for r in sentences:
        assert r["logprob"] < 0
        assert math.isclose(r["perplexity"], math.exp(-r["logprob"] / r["num_tokens"]), rel_tol=1e-12)


def test_eval_text_summary_only(capsys, tiny_checkpoint, text_file: Path) -> None:
    code, out, _ = run_cli(capsys, "eval", "--model", tiny_checkpoint.path, "--text", text_file, "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["summary"]["sentences"] == 3


def test_train_dry_run_end_to_end(capsys, ptb_tiny_eval_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "dry"
    code, out, err = run_cli(
        capsys, "train", "--config", "test", "--data-dir", ptb_tiny_eval_dir, "--out", out_dir, "--dry-run",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "best epoch 1" in out
    assert {"config.json", "model.safetensors", "vocab.txt", "train_log.jsonl", "learning_curve.png"} <= {
        p.name for p in out_dir.iterdir()
    }
    assert not (out_dir / ".resume").exists()
    ckpt = load_checkpoint(out_dir)
    assert len(ckpt.vocab) == 10_000
    assert ckpt.training["dry_run"] is True and ckpt.training["name"] == "test"
    valid_tokens = sum(len(s.split()) + 1 for s in (ptb_tiny_eval_dir / "ptb.valid.txt").read_text().splitlines())
    assert ckpt.metrics["valid_predictions"] == min(DRY_RUN_EVAL_TOKENS, valid_tokens) - 1
    assert math.isfinite(ckpt.metrics["test_ppl"])

    # The checkpoint it wrote is usable by `eval` straight away.
    code, out, err = run_cli(capsys, "eval", "--model", out_dir, "--data-dir", ptb_tiny_eval_dir, "--split", "valid")
    assert code == 0, err
    assert out.startswith("valid: perplexity ")


def test_train_interrupted_exits_130_with_a_resume_hint(capsys, monkeypatch, fake_ptb_dir, tmp_path: Path) -> None:
    def interrupted(config, opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "test", "--data-dir", str(fake_ptb_dir), "--out", str(tmp_path / "run")])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err


REPO_ROOT = Path(__file__).resolve().parents[3]


def run_module(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "trainer", *map(str, argv)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_trainer_unknown_config(tmp_path: Path) -> None:
    proc = run_module("train", "--config", "huge", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "unknown config 'huge'")


def test_python_m_trainer_errors_are_one_line(
    tmp_path: Path, wrong_shape_checkpoint: Path, tiny_vocab, make_model
) -> None:
    good = save_checkpoint(tmp_path / "good", make_model(vocab_size=len(tiny_vocab)), tiny_vocab)
    data = tmp_path / "other"
    data.mkdir()
    (data / "ptb.test.txt").write_text("the aardvark\n", encoding="utf-8")
    cases = [
        (["train", "--config", "test", "--data-dir", tmp_path / "nope", "--out", tmp_path / "run"], ["no such data"]),
        (["eval", "--model", wrong_shape_checkpoint], ["model.safetensors", "decoder.weight", "shape"]),
        (["eval", "--model", good, "--split", "test", "--data-dir", data], ["not in the vocabulary", "'aardvark'"]),
    ]
    for argv, fragments in cases:
        proc = run_module(*argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert_one_line_error(proc.stderr, *fragments)


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """As under compose when ./models belongs to another user: what to do, not a traceback."""
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(capsys, "train", "--config", "test", "--dry-run", "--out", tmp_path / "file" / "run")
    assert code == 2 and err.count("\n") == 1 and "file/run" in err, err

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli(capsys, "train", "--config", "test", "--dry-run", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "not writable by uid" in err and "TRAINER_USER" in err, err


def test_python_m_trainer_usage_error() -> None:
    proc = run_module("frobnicate")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_of_several_runs(capsys, tmp_path: Path) -> None:
    runs = []
    for name, ppl in (("run-a", 300.0), ("run-b", 200.0)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"epoch": e, "train_ppl": ppl / e, "valid_ppl": ppl / e + 10} for e in (1, 2, 3)]
        (d / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        runs.append(d)
    out = tmp_path / "curves.png"
    code, stdout, _ = run_cli(capsys, "plot", *runs, "--out", out)
    assert code == 0 and stdout.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "plot", tmp_path, "--out", out)
    assert code == 2
    assert_one_line_error(err, "train_log.jsonl")
