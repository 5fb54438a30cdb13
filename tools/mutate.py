"""Mutation check: break one core rule at a time and see that the tests notice.

    python tools/mutate.py                    # every mutation of tools/mutations.py (`make mutate`)
    python tools/mutate.py --only pct-alone --only queue-bound
    python tools/mutate.py --list             # the mutations and their test selections, nothing run

The working tree is never touched: its files (tracked and untracked, not the ignored ones) are copied into a
temporary directory, and each mutation is applied there, its targeted tests run (`pytest -x -q`, with a
timeout), and the file restored before the next one, even on Ctrl-C. First the union of all the selections
runs on the unmutated copy: a selection that fails already would "kill" every mutation and prove nothing.
Each test run is a fork of this process, which has imported torch and the web stack once (POSIX only).

Each mutation ends as one of:
  killed    its tests failed (or exceeded the timeout: a hang is noticed too)
  survived  its tests passed with the rule broken: a gap in the tests
  stale     its original snippet is not in the file exactly once: the list no longer matches the code
  error     the mutated code did not import, or its test selection ran nothing or was not understood
The exit status is 0 only when every mutation is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

from mutations import MUTATIONS, Mutation  # noqa: E402

DEFAULT_TIMEOUT_S = 300.0
# Imported once before the test runs fork (on a busy machine, importing torch alone can take half a minute).
PRELOAD = (
    "torch",
    "numpy",
    "safetensors.torch",
    "fastapi",
    "fastapi.testclient",
    "httpx",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "uvicorn",
    "tqdm",
    "pytest",
)
# pytest's exit status 1 is "some test failed"; any other failure (2: a collection error, e.g. a replacement
# that does not parse; 4: a node id that does not exist; 5: nothing collected) says the mutation list is wrong.
PYTEST_TESTS_FAILED = 1


@dataclass
class Outcome:
    """What became of one mutation."""

    mutation: Mutation
    status: str  # killed | survived | stale | error
    seconds: float
    summary: str  # pytest's last line, or why it did not run


def find_snippet(text: str, snippet: str) -> int:
    """How many times `snippet` occurs in `text` (a mutation applies only where it occurs exactly once)."""
    return text.count(snippet)


def stale_reason(root: Path, mutation: Mutation) -> str | None:
    """Why `mutation` cannot be applied to the tree at `root` (None when it can): a missing file, or a snippet
    that is absent or ambiguous; also a test selection naming a file or a test that does not exist."""
    path = root / mutation.path
    if not path.is_file():
        return f"{mutation.path}: no such file"
    count = find_snippet(path.read_text(encoding="utf-8"), mutation.original)
    if count != 1:
        return f"{mutation.path}: the original snippet occurs {count} times (expected once)"
    for selection in mutation.tests:
        test_file, *names = selection.split("::")
        if not (root / test_file).is_file():
            return f"test selection {selection}: no such file"
        if names and f"def {names[-1].split('[')[0]}(" not in (root / test_file).read_text(encoding="utf-8"):
            return f"test selection {selection}: no such test in {test_file}"
    return None


def copy_tree(src: Path, dest: Path) -> None:
    """Copy the files git knows of or would add (tracked and untracked, not ignored) from `src` into `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = src / name
        if not source.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def child_environment(copy: Path) -> dict[str, str]:
    """The environment of the test runs: the copy's packages first, the PTB data where it lives."""
    env = dict(os.environ)
    data = Path(env.get("PTB_DATA_DIR", "../shared/data/ptb")).expanduser()
    env["PTB_DATA_DIR"] = str(data if data.is_absolute() else (REPO_ROOT / data).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")]))
    # No bytecode: a mutant and its restored original can share a size and an mtime second, and so a .pyc.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_from(copy: Path, env: dict[str, str]) -> None:
    """Fail loudly unless `import lm, service, trainer` in the copy resolves to the copy (an editable install
    of the working tree must not shadow it, or no mutation would ever be seen by the tests)."""
    code = "import lm, service, trainer; print(lm.__file__); print(service.__file__); print(trainer.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env, check=True, capture_output=True, text=True
    ).stdout
    outside = [line for line in out.splitlines() if not Path(line).resolve().is_relative_to(copy.resolve())]
    if outside:
        raise SystemExit(f"the packages are imported from outside the copy ({outside}); cannot test mutations")


def preload() -> None:
    """Import the heavy third-party libraries and pytest's plugins once, here: each test run is a fork of this
    process, so it starts with them loaded and imports only the project's own (possibly mutated) modules
    afresh. Nothing of lm, service or trainer may be imported before the fork."""
    plugins = [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group="pytest11")]
    for name in (*PRELOAD, *plugins):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert not {"lm", "service", "trainer"} & set(sys.modules), "a project module was imported before the fork"


def _pytest_child(copy: Path, env: dict[str, str], args: Sequence[str], log: Path) -> NoReturn:
    """In the forked child: pytest over the copy, its output into `log`; never returns."""
    code = 3
    try:
        os.setpgid(0, 0)  # its own process group: a timeout kills it with any server a test started
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(copy)
        os.environ.clear()
        os.environ.update(env)
        sys.path.insert(0, str(copy))
        sys.dont_write_bytecode = True
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import pytest

        code = int(pytest.main(list(args)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_pytest(copy: Path, env: dict[str, str], selection: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """(pytest's exit status, or None on timeout; its last line of output) for `selection` in the copy."""
    log = copy.parent / "pytest.log"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _pytest_child(copy, env, ["-x", "-q", "-p", "no:cacheprovider", *selection], log)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    deadline = time.monotonic() + timeout
    status = None
    try:
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                break
            else:
                time.sleep(0.1)
    finally:
        if status is None:  # timed out, or Ctrl-C: the run and whatever it started go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if status is None:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in last_lines(log, 5).splitlines() if line.strip()]
    summary = re.sub(r"=+", "", lines[-1]).strip() if lines else "no output"
    return status, summary


def last_lines(path: Path, n: int) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def apply_and_test(copy: Path, env: dict[str, str], mutation: Mutation, timeout: float) -> Outcome:
    """Apply one mutation to the copy, run its tests, restore the file (whatever happens)."""
    started = time.monotonic()
    reason = stale_reason(copy, mutation)
    if reason is not None:
        return Outcome(mutation, "stale", 0.0, reason)
    path = copy / mutation.path
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original.replace(mutation.original, mutation.replacement, 1), encoding="utf-8")
        code, summary = run_pytest(copy, env, mutation.tests, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - started
    if code is None or code == PYTEST_TESTS_FAILED:
        return Outcome(mutation, "killed", seconds, summary)
    if code == 0:
        return Outcome(mutation, "survived", seconds, summary)
    return Outcome(mutation, "error", seconds, f"pytest exit status {code}: {summary}")


def union_of_selections(mutations: Iterable[Mutation]) -> list[str]:
    return list(dict.fromkeys(s for m in mutations for s in m.tests))


def markdown_table(outcomes: Sequence[Outcome]) -> str:
    rows = ["| mutation | file | tests run | result | seconds |", "|---|---|---|---|---|"]
    for o in outcomes:
        m = o.mutation
        tests = "<br>".join(f"`{t}`" for t in m.tests)
        result = o.status if o.status != "killed" else f"killed ({o.summary})"
        if o.status in ("stale", "error", "survived"):
            result = f"**{o.status}** ({o.summary})"
        rows.append(f"| `{m.name}`: {m.description} | `{m.path}` | {tests} | {result} | {o.seconds:.1f} |")
    return "\n".join(rows)


def select(names: Sequence[str] | None) -> list[Mutation]:
    if not names:
        return list(MUTATIONS)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown mutation(s): {', '.join(unknown)}; see --list")
    return [by_name[n] for n in names]


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their test selections")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated copy")
    args = parser.parse_args(argv)
    mutations = select(args.only)
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.description}\n    {m.path}\n    tests: {' '.join(m.tests)}")
        return 0

    outcomes: list[Outcome] = []
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    try:
        with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
            copy = Path(tmp) / REPO_ROOT.name
            copy_tree(REPO_ROOT, copy)
            env = child_environment(copy)
            check_imports_from(copy, env)
            preload()
            if not args.no_baseline:
                selection = union_of_selections(m for m in mutations if stale_reason(copy, m) is None)
                print(f"baseline: {len(selection)} test selections on the unmutated copy ...", flush=True)
                code, summary = run_pytest(copy, env, selection, args.timeout * 4)
                if code != 0:
                    print(last_lines(copy.parent / "pytest.log", 40), file=sys.stderr)
                    print(f"baseline failed ({summary}): fix the tests before checking mutations", file=sys.stderr)
                    return 2
                print(f"baseline: {summary}", flush=True)
            for i, m in enumerate(mutations, start=1):
                outcome = apply_and_test(copy, env, m, args.timeout)
                outcomes.append(outcome)
                print(f"[{i}/{len(mutations)}] {m.name}: {outcome.status} ({outcome.summary}, {outcome.seconds:.1f} s)")
    except KeyboardInterrupt:
        print("interrupted: the copy is removed, the working tree was never changed", file=sys.stderr)
        return 130

    print()
    print(markdown_table(outcomes))
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} mutations killed", end="")
    print(f"; not killed: {', '.join(f'{o.mutation.name} ({o.status})' for o in bad)}" if bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
