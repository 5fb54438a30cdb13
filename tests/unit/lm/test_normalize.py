"""lm.normalize.PTBNormalizer against the real PTB vocabulary: the table of docs/normalization.md, PTB's own text,
the rules."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm.normalize import PTBNormalizer, whitespace_tokens

DOC = Path(__file__).resolve().parents[3] / "docs" / "normalization.md"


@pytest.fixture(scope="module")
def normalizer(ptb_vocab) -> PTBNormalizer:
    return PTBNormalizer(ptb_vocab)


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row (`\\|` is a literal pipe; pipes inside code spans do not split)."""
    row = row.strip()
    row = row.removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    cells, cell, ticks, i = [], "", 0, 0
    while i < len(row):
        c = row[i]
        if c == "\\" and i + 1 < len(row) and row[i + 1] == "|":
            cell += "|"
            i += 2
            continue
        if c == "`":
            run = len(row[i:]) - len(row[i:].lstrip("`"))
            if ticks == 0:
                ticks = run
            elif run == ticks:
                ticks = 0
            cell += "`" * run
            i += run
            continue
        if c == "|" and ticks == 0:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += c
        i += 1
    cells.append(cell.strip())
    return cells


def _code_span(cell: str) -> str | None:
    """The text of a cell that is one code span (CommonMark: one space of padding on both sides is dropped)."""
    m = re.fullmatch(r"(`+)(.*?)\1", cell, flags=re.S)
    if not m:
        return None
    text = m.group(2)
    if len(text) >= 2 and text[0] == " " and text[-1] == " " and text.strip():
        text = text[1:-1]
    return text


def documented_normalisation_table() -> list[tuple[str, list[str]]]:
    """(input, expected tokens) from the table after docs/normalization.md's first heading that names Normalisation."""
    if not DOC.is_file():
        pytest.fail(f"{DOC} does not exist yet: its Normalisation table is what this test checks")
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("#") and "normalisation" in line.lower()),
        None,
    )
    if start is None:
        pytest.fail(f"{DOC}: no heading containing 'Normalisation'")
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.lstrip().startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break  # the table has ended
    if len(rows) < 3:
        pytest.fail(f"{DOC}: no table (header, separator, rows) under the Normalisation heading")
    header = [h.lower() for h in rows[0]]
    col_in = next((i for i, h in enumerate(header) if "input" in h), 0)
    col_out = next((i for i, h in enumerate(header) if "token" in h), 1)
    table = []
    for cells in rows[2:]:
        text = _code_span(cells[col_in])
        assert text is not None, f"docs/normalization.md table: input {cells[col_in]!r} is not in backticks"
        expected = _code_span(cells[col_out])
        table.append((text, expected.split() if expected is not None else []))
    return table


def test_the_documented_normalisation_table(normalizer, ptb_vocab) -> None:
    table = documented_normalisation_table()
    assert len(table) >= 5, "the Normalisation table of docs/normalization.md has fewer than five rows"
    wrong = []
    for text, expected in table:
        got = normalizer(text)
        as_scored = [t if t in ptb_vocab else "<unk>" for t in got]
        if expected not in (got, as_scored):
            wrong.append(f"{text!r}: the docs say {expected}, the normaliser gives {got}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The company said profits rose 5% to $30 million.", "the company said profits rose N N to $ N million"),
        ("rose 5 % to", "rose N N to"),  # a standalone % is N too, not punctuation to drop
        ("Mr. Smith didn't say.", "mr. smith did n't say"),
        ("can't", "ca n't"),
        ("won't", "wo n't"),
        ("don't", "do n't"),
        ("U.S. Corp.", "u.s. corp."),
        ("funds'", "funds '"),
        ("MGM/UA", "mgm\\/ua"),
        ("1,000 and 3.5", "N and N"),
        ("C$5", "c$ N"),
        ("£20", "# N"),
        ("IBM's shares", "ibm 's shares"),
        ("“Quoted,” he said (twice).", "quoted he said twice"),
        ("They’re here", "they 're here"),
        ("1/2 of -4", "N of N"),
        ("$30", "$ N"),
        ("N", "N"),
    ],
)
def test_normalises_to_ptb_conventions(normalizer, text: str, expected: str) -> None:
    assert normalizer(text) == expected.split()


@pytest.mark.parametrize("text", ["-- ... , ; : ! ?", "(", '" "', "—", "…", ""])
def test_punctuation_only_gives_no_tokens(normalizer, text: str) -> None:
    assert normalizer(text) == []


def test_punctuation_around_words_is_dropped(normalizer) -> None:
    assert normalizer('"Stocks fell -- sharply; then (slowly) rose!"') == [
        "stocks",
        "fell",
        "sharply",
        "then",
        "slowly",
        "rose",
    ]


def test_words_outside_the_vocabulary_are_kept_for_the_caller(normalizer, ptb_vocab) -> None:
    tokens = normalizer("The Zyxwv rose")
    assert tokens == ["the", "zyxwv", "rose"]
    assert "zyxwv" not in ptb_vocab


def test_ptb_text_is_unchanged(normalizer, ptb_dir) -> None:
    """Every line of the real ptb.valid.txt normalises to its own tokens (idempotent on PTB text)."""
    valid = ptb_dir / "ptb.valid.txt"
    lines = valid.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 3000
    changed = [(line, normalizer(line)) for line in lines if normalizer(line) != line.split()]
    assert not changed, f"{len(changed)} lines changed, e.g. {changed[:3]}"


def test_whitespace_tokens_split_on_whitespace_only() -> None:
    assert whitespace_tokens("The  Company's\t5%\n$30 million.") == ["The", "Company's", "5%", "$30", "million."]
    assert whitespace_tokens("   ") == []


# Words an attacker can send in one request (20,000 characters): each family below was super-linear once
# (a rescan or a re-slice per character peeled, or a recursion per suffix).
PATHOLOGICAL = {
    "brackets": lambda n: "(" * n + ")" * n,
    "percent signs": lambda n: "1" + "%" * (2 * n),
    "quotes": lambda n: "'" * (2 * n),
    "clitics": lambda n: "x" + "'s" * n,
    "digits then clitics": lambda n: "1" * n + "'s" * (n // 2),
    "negations": lambda n: "do" + "n't" * (2 * n // 3),
    "periods around a word": lambda n: "." * n + "corp." + "." * n,
    "possessives": lambda n: "s'" * n,
    "leading and possessive": lambda n: "(" * n + "funds'" + ")" * n,
}


def _cpu_seconds(normalizer: PTBNormalizer, text: str) -> float:
    """The least CPU time of a few runs (the machine is shared: the least is the least disturbed)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        normalizer(text)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("family", PATHOLOGICAL, ids=list(PATHOLOGICAL))
def test_normalisation_is_linear_in_the_length_of_a_word(normalizer, family: str) -> None:
    """Doubling the word at most about doubles the time (quadratic would be 4x), and 20,000 characters of
    any of these take well under a second."""
    make = PATHOLOGICAL[family]
    small, large = _cpu_seconds(normalizer, make(1500)), _cpu_seconds(normalizer, make(3000))
    assert large < 3 * small + 0.005, f"{family}: {small:.4f} s -> {large:.4f} s for twice the input"
    assert _cpu_seconds(normalizer, make(10_000)) < 0.5


@pytest.mark.parametrize("family", PATHOLOGICAL, ids=list(PATHOLOGICAL))
def test_pathological_words_give_the_same_tokens_as_short_ones(normalizer, family: str) -> None:
    """No recursion limit: a long word is split as its short version is, only with more tokens."""
    tokens = normalizer(PATHOLOGICAL[family](5000))
    assert all(t and not any(c.isspace() for c in t) for t in tokens)


def test_a_number_with_thousands_of_percent_signs(normalizer) -> None:
    assert normalizer("1" + "%" * 2000) == ["N"] * 2001


_ALPHABET = st.sampled_from(
    [*"\"'([{<)]}>,.;:!?%$#/*-snt'dmNa1 0.,£`\u2019\u2014\u2026\t", "n't", "'s", "corp.", "us$", "c$", "the"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(), st.lists(_ALPHABET, max_size=40).map("".join)))
def test_any_text_normalises_to_tokens_without_whitespace(normalizer, text: str) -> None:
    tokens = normalizer(text)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
