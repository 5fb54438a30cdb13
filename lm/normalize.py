"""Raw text -> PTB tokens, following the conventions of Mikolov's preprocessed Penn Treebank.

The rules were read off the corpus and its 10,000-word vocabulary:

- lower-case everything (except PTB's own number token `N`: normalising PTB text changes nothing);
  curly quotes and apostrophes become straight ones;
- a word the vocabulary holds as written is kept as is (`mr.`, `u.s.`, `corp.`, `third-quarter`, `'80s`, `s&p`);
- punctuation the corpus removed is dropped: `, . ; : ? ! " ( ) [ ] { } -- ...` around words and on its own
  (a trailing period stays only where the vocabulary holds the word with it, e.g. `inc.`);
- numbers become `N` (`1,000`, `3.5`, `1/2`, `-4`), `%` becomes `N` too (PTB writes "5%" as `N N`), and a
  currency sign is its own token (`$30` -> `$ N`, `C$5` -> `c$ N`, `£5` -> `# N`, as PTB writes pounds);
- the clitics PTB splits off become their own tokens: `'s 're 've 'll 'd 'm n't` ("don't" -> `do n't`,
  "can't" -> `ca n't`, "won't" -> `wo n't`), and a plural possessive's apostrophe too ("funds'" -> `funds '`);
- `/` and `*` are written `\\/` and `\\*` as in the corpus (`mgm/ua` -> `mgm\\/ua`).

Words still outside the vocabulary are left as they are; the caller maps them to `<unk>` and reports them.
"""

from __future__ import annotations

import re
import unicodedata

from lm.vocab import Vocabulary

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u2032": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": " -- ",
        "\u2026": " ... ",
        "\u00a3": "#",
        "\u00a0": " ",
    }
)
_LEADING = set("\"'([{<")
_TRAILING = set("\"')]}>,.;:!?")
_NUMBER = re.compile(r"^[+-]?(\d[\d,]*(\.\d+)?|\.\d+|\d+(\\?/)\d+)$")
_CURRENCY = ("us$", "c$", "a$", "$", "#")
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
NUM = "N"


class PTBNormalizer:
    """Callable: `normalizer(text) -> list[str]` of PTB-style tokens (possibly outside the vocabulary)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def __call__(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
        tokens: list[str] = []
        for word in text.split():
            # PTB's own `N` stays `N`, so already-normalised PTB text comes through unchanged.
            tokens.extend([NUM] if word == NUM else self._word(word.lower()))
        return tokens

    def _known(self, w: str) -> bool:
        return w in self.vocab.stoi

    def _strip(self, w: str) -> str:
        """Peel punctuation off both ends, stopping where the vocabulary holds the word (`corp.`, `'80s`)."""
        leading = len(w) - len(w.lstrip("".join(_LEADING)))
        for i in range(leading + 1):
            core = w[i:]
            while core:
                if self._known(core):
                    return core
                if core[-1] not in _TRAILING or (core.endswith("s'") and len(core) > 2):
                    break
                core = core[:-1]
        core = w[leading:]
        # A plural possessive keeps its apostrophe ("funds'" -> funds '), other trailing punctuation goes.
        while core and core[-1] in _TRAILING and not (core.endswith("s'") and len(core) > 2):
            core = core[:-1]
        return core

    def _word(self, w: str) -> list[str]:
        if self._known(w):
            return [w]
        w = self._strip(w)
        if not w or self._known(w):
            return [w] if w else []
        escaped = w.replace("/", "\\/").replace("*", "\\*")
        if escaped != w and self._known(escaped):
            return [escaped]
        if w == "%":
            return [NUM]
        if all(_is_punct(c) for c in w) and w not in _CURRENCY:
            return []  # `--`, `...`, `-`: PTB dropped these
        for sign in _CURRENCY:
            if w.startswith(sign) and len(w) > len(sign) and (w[len(sign)].isdigit() or w[len(sign)] == "."):
                return [sign, *self._word(w[len(sign) :])]
        if w.endswith("%") and len(w) > 1:
            return [*self._word(w[:-1]), NUM]
        if _NUMBER.match(w):
            return [NUM]
        if w.endswith("n't") and len(w) > 3:
            return [*self._word(w[:-3]), "n't"]
        for clitic in _CLITICS:
            if w.endswith(clitic) and len(w) > len(clitic):
                return [*self._word(w[: -len(clitic)]), clitic]
        if w.endswith("s'") and len(w) > 2:
            return [*self._word(w[:-1]), "'"]
        return [w]


def _is_punct(c: str) -> bool:
    return unicodedata.category(c).startswith("P") or c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def whitespace_tokens(text: str) -> list[str]:
    """`normalize: false`: the text split on whitespace, nothing else."""
    return text.split()
