"""The web page in a real headless browser (Debian's Chromium driven by Playwright) against the real server:
typing scores the sentence word by word, the page shows what /score returns, suggestions append, compare works.

Needs /usr/bin/chromium (`apt-get install chromium`; `make e2e` installs it when missing): without it these
tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from benchmarks.common import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: no background fetches, no update checks.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LMSERVE_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the server exited during startup"
            time.sleep(0.25)
        else:
            pytest.fail("the server was not ready after 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    yield pg
    context.close()
    assert not errors, errors


def score(server: str, text: str, **options) -> dict:
    r = httpx.post(server + "/score", json={"text": text, "per_token": True, **options}, timeout=10)
    r.raise_for_status()
    return r.json()["results"][0]


def test_typing_shows_coloured_tokens_and_the_perplexity_of_score(page: Page, server: str) -> None:
    box = page.locator("#text")
    box.fill("")
    box.press_sequentially("The stock market rose 5%", delay=20)  # real keystrokes, debounced
    expected = score(server, "The stock market rose 5%")
    tokens = page.locator("#tokens .tok")
    expect(tokens).to_have_count(len(expected["tokens"]))
    expect(page.locator("#stats [data-stat=stat-ppl]")).to_have_text(f"{expected['perplexity']:,.2f}")
    expect(page.locator("#stats [data-stat=stat-logprob]")).to_have_text(f"{expected['logprob']:,.3f}")
    for i, token in enumerate(expected["tokens"]):
        span = tokens.nth(i)
        assert span.inner_text().split("\n")[0] == token
        assert float(span.get_attribute("data-logprob")) == pytest.approx(expected["token_logprobs"][i], abs=1e-6)
        assert int(span.get_attribute("data-rank")) == expected["token_ranks"][i]
        assert f"rank {expected['token_ranks'][i]:,}" in span.get_attribute("title")
        assert re.match(r"rgb\(", span.evaluate("e => e.style.backgroundColor"))
    # Different surprisal, different colour: the page does not paint every word alike.
    colours = {tokens.nth(i).evaluate("e => e.style.backgroundColor") for i in range(len(expected["tokens"]))}
    assert len(colours) > 1
    # The normalised tokens are visible: "5%" became N N.
    assert [t.split("\n")[0] for t in tokens.all_inner_texts()][-3:] == ["N", "N", "<eos>"]


def test_oov_words_are_marked(page: Page, server: str) -> None:
    page.locator("#text").fill("the xylophonist sang")
    expect(page.locator("#tokens .tok.oov")).to_have_count(1)
    assert "xylophonist" in page.locator("#tokens .tok.oov").get_attribute("title")
    expect(page.locator("#stats [data-stat=stat-oov]")).to_have_text("xylophonist")


def test_clicking_a_suggestion_appends_it(page: Page, server: str) -> None:
    page.locator("#text").fill("the stock market ")
    first = page.locator("#suggestions .suggestion").first
    expect(first).to_be_visible()
    r = httpx.post(server + "/next-word", json={"prefix": "the stock market ", "top_k": 10}, timeout=10)
    top = [w["word"] for w in r.json()["results"][0]["top_k"]]
    shown = [b.get_attribute("data-word") for b in page.locator("#suggestions .suggestion").all()]
    assert shown == top
    word = shown[1]
    page.locator(f'#suggestions .suggestion[data-word="{word}"]').click()
    expect(page.locator("#text")).to_have_value(f"the stock market {word} ")
    expect(page.locator("#tokens .tok")).to_have_count(len(score(server, f"the stock market {word}")["tokens"]))


def test_keyboard_only_use(page: Page, server: str) -> None:
    page.locator("#text").fill("the company said ")
    suggestion = page.locator("#suggestions .suggestion").first
    expect(suggestion).to_be_visible()
    word = suggestion.get_attribute("data-word")
    suggestion.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#text")).to_have_value(f"the company said {word} ")
    # Tokens are focusable and describe themselves.
    page.locator("#tokens .tok").first.focus()
    expect(page.locator("#token-detail")).to_contain_text("rank")


def test_compare_mode_and_model_card(page: Page, server: str) -> None:
    card = httpx.get(server + "/model", timeout=10).json()
    expect(page.locator("#model-facts")).to_contain_text(f"{card['metrics']['test_ppl']:,.2f}")
    expect(page.locator("#model-facts")).to_contain_text(f"{card['parameters']:,}")
    page.locator("#tab-compare").click()
    expect(page.locator("#panel-compare")).to_be_visible()
    a = score(server, "the stock market rose", normalize=True)
    b = score(server, "the stock market sang", normalize=True)
    expect(page.locator("#stats-a [data-stat=stat-ppl]")).to_have_text(f"{a['perplexity']:,.2f}")
    expect(page.locator("#stats-b [data-stat=stat-ppl]")).to_have_text(f"{b['perplexity']:,.2f}")
    winner = "A" if a["logprob"] > b["logprob"] else "B"
    expect(page.locator("#verdict")).to_contain_text(f"{winner} is")


def test_the_prefilled_sentence_suggests_the_next_word(page: Page, server: str) -> None:
    """The page opens on "the stock market " (a space after it): the suggestions are next words, not completions
    of "market"."""
    expect(page.locator("#text")).to_have_value("the stock market ")
    first = page.locator("#suggestions .suggestion").first
    expect(first).to_be_visible()
    r = httpx.post(server + "/next-word", json={"prefix": "the stock market", "top_k": 1}, timeout=10)
    assert first.get_attribute("data-word") == r.json()["results"][0]["top_k"][0]["word"]


def test_no_matching_suggestion_is_said(page: Page, server: str) -> None:
    page.locator("#text").fill("the stock market qqzx")
    expect(page.locator("#no-suggestions")).to_be_visible()
    expect(page.locator("#no-suggestions")).to_contain_text("qqzx")
    expect(page.locator("#suggestions .suggestion")).to_have_count(0)
    page.locator("#text").fill("the stock market ")
    expect(page.locator("#suggestions .suggestion").first).to_be_visible()
    expect(page.locator("#no-suggestions")).to_be_hidden()


def test_each_stat_label_stays_with_its_value(browser, server: str) -> None:
    for width in (360, 600, 800, 1100):
        context = browser.new_context(viewport={"width": width, "height": 900})
        pg = context.new_page()
        pg.goto(server + "/")
        expect(pg.locator("#stats [data-stat=stat-ppl]")).to_be_visible()
        pairs = pg.locator("#stats > div")
        expect(pairs).to_have_count(5)
        for i in range(5):
            label = pairs.nth(i).locator("dt").bounding_box()
            value = pairs.nth(i).locator("dd").bounding_box()
            assert abs(label["x"] - value["x"]) < 1, (width, i)  # the value sits right under its label
            assert 0 <= value["y"] - (label["y"] + label["height"]) < 20, (width, i)
        context.close()


def test_continue_this_sentence_appends_the_greedy_completion(page: Page, server: str) -> None:
    page.locator("#text").fill("the company said ")
    page.locator("#temperature").fill("0")
    page.locator("#continue-words").fill("4")
    r = httpx.post(
        server + "/v1/completions",
        json={"prompt": "the company said ", "max_tokens": 4, "temperature": 0},
        timeout=10,
    )
    completion = r.json()["choices"][0]["text"]
    assert completion
    page.locator("#continue").click()
    expect(page.locator("#text")).to_have_value(f"the company said {completion} ")
