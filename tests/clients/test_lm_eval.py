"""EleutherAI's lm-evaluation-harness (`lm_eval --model local-completions`) against the service, offline, on two
task files written here: a `multiple_choice` task and a `loglikelihood_rolling` task over PTB test sentences.
lm-eval finds the server's tokenizer through /tokenizer_info and /tokenize; every per-sample log-likelihood it
logs must equal what /score gives for the same words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from client_helpers import REPO, ptb_test_file, score

SENTENCES = 6  # PTB test sentences in the rolling task


def ptb_test_sentences(n: int) -> list[str]:
    path = ptb_test_file()
    if not path.is_file():
        pytest.fail(f"PTB data not found at {path}; set PTB_DATA_DIR")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if 5 <= len(line.split()) <= 25][:n]


def write_tasks(root: Path, sentences: list[str]) -> list[dict]:
    """Two task configs and their data files in `root`; returns the multiple-choice docs."""
    choice_docs = []
    for s in sentences[:4]:
        words = s.split()
        context, right = " ".join(words[:-2]), words[-2]
        wrong = ["bank", "said", "the"]
        choices = [right, *[w for w in wrong if w != right][:2]]
        choice_docs.append({"context": context, "choices": choices, "label": 0})
    (root / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in choice_docs), encoding="utf-8")
    (root / "rolling.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences), encoding="utf-8")
    (root / "ptb_choice.yaml").write_text(
        f"""task: ptb_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "choice.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""",
        encoding="utf-8",
    )
    (root / "ptb_rolling.yaml").write_text(
        f"""task: ptb_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "rolling.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""",
        encoding="utf-8",
    )
    return choice_docs


def run_lm_eval(server: str, tasks: Path, out: Path) -> None:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    model_args = f"model=ptb-cpu,base_url={server}/v1/completions,num_concurrent=1,max_retries=1"
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--tasks", "ptb_choice,ptb_rolling", "--include_path", str(tasks), "--batch_size", "1",
        "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "remote tokenizer" in (done.stdout + done.stderr).lower()  # found through /tokenizer_info


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(rows, key=lambda r: r["doc_id"])


def loglikelihood(resp) -> float:
    """A logged response: [loglikelihood, is_greedy] for a choice, or the bare loglikelihood for a rolling doc."""
    while isinstance(resp, list):
        resp = resp[0]
    return float(resp)


@pytest.fixture(scope="module")
def lm_eval_run(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[dict]]:
    root = tmp_path_factory.mktemp("lm_eval")
    sentences = ptb_test_sentences(SENTENCES)
    docs = write_tasks(root, sentences)
    run_lm_eval(server, root, root / "out")
    return root / "out", sentences, docs


def test_multiple_choice_loglikelihoods_equal_score(lm_eval_run, server: str) -> None:
    out, _, docs = lm_eval_run
    rows = samples(out, "ptb_choice")
    assert len(rows) == len(docs)
    for row, doc in zip(rows, docs, strict=True):
        context_tokens = len(score(server, [doc["context"]])[0]["tokens"])
        refs = score(server, [f"{doc['context']} {c}" for c in doc["choices"]])
        expected = [sum(r["token_logprobs"][context_tokens:]) for r in refs]
        got = [loglikelihood(resp) for resp in row["resps"]]
        assert got == pytest.approx(expected, abs=1e-4)
        # lm-eval's is_greedy compares floats exactly: the most probable choice must be greedy where it is the argmax.
        assert row["acc"] in (0, 1, 0.0, 1.0)


def test_rolling_loglikelihoods_equal_score(lm_eval_run, server: str) -> None:
    out, sentences, _ = lm_eval_run
    rows = samples(out, "ptb_rolling")
    assert len(rows) == len(sentences)
    refs = score(server, sentences)  # <eos>-primed, no final <eos>: lm-eval's rolling windows start from <eos>
    for row, ref in zip(rows, refs, strict=True):
        assert loglikelihood(row["resps"]) == pytest.approx(ref["logprob"], abs=1e-4)
