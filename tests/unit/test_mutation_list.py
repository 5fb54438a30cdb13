"""The mutation list of `make mutate` stays in step with the code: every snippet is still there, once.

`make mutate` itself is slow (it runs tests once per mutation) and is not part of the suite; this check is, so
that a change which moves the code a mutation points at fails here, and the list is updated with it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_mutate():
    spec = importlib.util.spec_from_file_location("mutate", REPO_ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutate", module)
    spec.loader.exec_module(module)
    return module


mutate = load_mutate()


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.name)
def test_the_snippet_is_in_the_code_once_and_the_mutant_parses(mutation) -> None:
    reason = mutate.stale_reason(REPO_ROOT, mutation)
    assert reason is None, f"mutation {mutation.name} is stale: {reason}; update tools/mutations.py"
    source = (REPO_ROOT / mutation.path).read_text(encoding="utf-8")
    mutant = source.replace(mutation.original, mutation.replacement, 1)
    assert mutant != source
    ast.parse(mutant, filename=mutation.path)  # a replacement that does not parse tests nothing


def test_names_are_unique_and_every_mutation_names_its_tests() -> None:
    names = [m.name for m in mutate.MUTATIONS]
    assert len(names) == len(set(names))
    assert all(m.tests and m.description for m in mutate.MUTATIONS)
    assert 20 <= len(names) <= 80  # a sanity bound: the list neither emptied nor duplicated by accident


def test_a_moved_snippet_is_reported_stale(tmp_path: Path) -> None:
    m = mutate.MUTATIONS[0]
    (tmp_path / m.path).parent.mkdir(parents=True)
    (tmp_path / m.path).write_text("nothing of the original here\n", encoding="utf-8")
    assert "occurs 0 times" in mutate.stale_reason(tmp_path, m)
    (tmp_path / m.path).write_text(m.original + "\n" + m.original + "\n", encoding="utf-8")
    assert "occurs 2 times" in mutate.stale_reason(tmp_path, m)
    (tmp_path / m.path).unlink()
    assert "no such file" in mutate.stale_reason(tmp_path, m)


def test_a_renamed_test_is_reported_stale(tmp_path: Path) -> None:
    m = next(m for m in mutate.MUTATIONS if "::" in m.tests[0])
    (tmp_path / m.path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / m.path).write_text(m.original + "\n", encoding="utf-8")
    test_file = tmp_path / m.tests[0].split("::")[0]
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text("def test_something_else() -> None:\n    pass\n", encoding="utf-8")
    assert "no such test" in mutate.stale_reason(tmp_path, m)
