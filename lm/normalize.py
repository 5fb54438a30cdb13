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
from functools import lru_cache
from itertools import accumulate

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
_NUMBER_CHARS = frozenset("0123456789+-,./\\")
_CURRENCY = ("us$", "c$", "a$", "$", "#")
_CURRENCY_FIRST = frozenset(sign[0] for sign in _CURRENCY)
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
NUM = "N"


class PTBNormalizer:
    """Callable: `normalizer(text) -> list[str]` of PTB-style tokens (possibly outside the vocabulary).

    Linear in the length of the text, whatever it holds: a word is walked with two indices, never re-sliced
    or re-scanned per character peeled, and only substrings no longer than the vocabulary's longest token are
    looked up (a 20,000-character run of brackets costs what 20,000 letters cost).
    """

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.longest = max(map(len, vocab.itos))
        # For each leading punctuation character, the longest vocabulary token starting with it (0: none does,
        # so a word cannot start there): a run of 19,000 `"` is skipped, not looked up 19 ways per character.
        self.longest_from = {c: max((len(t) for t in vocab.itos if t[0] == c), default=0) for c in _LEADING}

    def __call__(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
        tokens: list[str] = []
        stoi = self.vocab.stoi
        for word in text.split():
            # PTB's own `N` stays `N`, so already-normalised PTB text comes through unchanged.
            if word == NUM:
                tokens.append(NUM)
                continue
            word = word.lower()
            if word in stoi:  # known as written (most words): nothing to peel
                tokens.append(word)
            else:
                tokens.extend(_Word(word, self).tokens())
        return tokens


class _Word:
    """One lower-cased word being split into tokens; `w[lo:hi]` is what is left of it.

    The word is walked with two indices: each step peels something off (punctuation, a currency sign, a
    suffix) in O(1) per character peeled, and nothing is looked up that is longer than a vocabulary token.
    """

    def __init__(self, w: str, normalizer: PTBNormalizer) -> None:
        self.w, self.longest, self.stoi = w, normalizer.longest, normalizer.vocab.stoi
        self.longest_from = normalizer.longest_from
        self._punct: list[int] | None = None
        self._number: list[int] | None = None

    def all_punct(self, lo: int, hi: int) -> bool:
        """Whether every character of w[lo:hi] is punctuation, in O(1) once the word's counts are made."""
        if self._punct is None:  # punct[k]: punctuation characters before k (a loop in C, made once)
            self._punct = list(accumulate(map(_is_punct, self.w), initial=0))
        return self._punct[hi] - self._punct[lo] == hi - lo

    def all_number_chars(self, lo: int, hi: int) -> bool:
        """Whether every character of w[lo:hi] can be part of a number, in O(1) once the counts are made."""
        if self._number is None:
            self._number = list(accumulate(map(_NUMBER_CHARS.__contains__, self.w), initial=0))
        return self._number[hi] - self._number[lo] == hi - lo

    def known(self, lo: int, hi: int) -> bool:
        return hi - lo <= self.longest and self.w[lo:hi] in self.stoi

    def possessive_end(self, lo: int, hi: int) -> bool:
        """`w[lo:hi]` ends in a plural possessive ("funds'"), whose apostrophe is a token, not punctuation."""
        return hi - lo > 2 and self.w[hi - 1] == "'" and self.w[hi - 2] == "s"

    def tokens(self) -> list[str]:
        """Leading currency signs, one core token (or none), then the suffixes peeled off the end."""
        w, lo, hi = self.w, 0, len(self.w)
        head: list[str] = []
        tail: list[str] = []  # suffixes, last first
        while True:
            if self.known(lo, hi):
                return [*head, w[lo:hi], *reversed(tail)]
            lo, hi = self.strip(lo, hi)
            core = self.single(lo, hi)
            if core is not None:
                return [*head, *core, *reversed(tail)]
            sign = self.currency(lo, hi)
            if sign is not None:
                head.append(sign)
                lo += len(sign)
                continue
            suffix = self.suffix(lo, hi)
            if suffix is None:
                return [*head, w[lo:hi], *reversed(tail)]
            tail.append(suffix)
            hi -= 1 if suffix == NUM else len(suffix)

    def strip(self, lo: int, hi: int) -> tuple[int, int]:
        """Peel punctuation off both ends, stopping where the vocabulary holds the word (`corp.`, `'80s`)."""
        w = self.w
        if lo == hi or (w[lo] not in _LEADING and w[hi - 1] not in _TRAILING):
            return lo, hi  # nothing to peel (the common case)
        leading = lo
        while leading < hi and w[leading] in _LEADING:
            leading += 1
        # Peeling the end stops after the last character that is not trailing punctuation, or one further at
        # a plural possessive's apostrophe.
        last = hi
        while last > lo and w[last - 1] in _TRAILING:
            last -= 1
        # A token starting before last - longest cannot reach `last`: those starts are skipped, not tried.
        for i in range(max(lo, last - self.longest), leading + 1):
            reach = self.longest_from[w[i]] if i < leading else self.longest
            if not reach:
                continue
            stop = last + 1 if last < hi and self.possessive_end(i, last + 1) else last
            # Longest first, from the end down to where peeling stops; only lengths a token can have.
            for j in range(min(hi, i + reach), max(stop, i + 1) - 1, -1):
                if self.known(i, j):
                    return i, j
        # A plural possessive keeps its apostrophe ("funds'" -> funds '), other trailing punctuation goes.
        j = hi
        while j > leading and w[j - 1] in _TRAILING and not self.possessive_end(leading, j):
            j -= 1
        return leading, j

    def single(self, lo: int, hi: int) -> list[str] | None:
        """The tokens of a stripped `w[lo:hi]` that is one token or none (known, `%`, punctuation, a number);
        None when something can still be peeled off it."""
        w = self.w
        if lo == hi:
            return []
        if self.known(lo, hi):
            return [w[lo:hi]]
        if hi - lo <= self.longest:
            escaped = w[lo:hi].replace("/", "\\/").replace("*", "\\*")
            if escaped != w[lo:hi] and escaped in self.stoi:
                return [escaped]
        if hi - lo == 1 and w[lo] == "%":
            return [NUM]
        if self.all_punct(lo, hi) and w[lo:hi] not in _CURRENCY:
            return []  # `--`, `...`, `-`: PTB dropped these
        if w[hi - 1] == "%" or self.currency(lo, hi) is not None:
            return None
        # Only a run of number characters can be a number: the regex runs at most once per word.
        if self.all_number_chars(lo, hi) and _NUMBER.match(w[lo:hi]):
            return [NUM]
        return None

    def currency(self, lo: int, hi: int) -> str | None:
        """The currency sign `w[lo:hi]` starts with when it is an amount (`$30`, `c$.5`), else None."""
        w = self.w
        if w[lo] not in _CURRENCY_FIRST:
            return None
        for sign in _CURRENCY:
            k = lo + len(sign)
            if hi > k and w.startswith(sign, lo) and (w[k].isdigit() or w[k] == "."):
                return sign
        return None

    def suffix(self, lo: int, hi: int) -> str | None:
        """What comes off the end of `w[lo:hi]` as its own token: `%` (as N), a clitic, a possessive's '."""
        w = self.w
        if w[hi - 1] == "%" and hi - lo > 1:
            return NUM
        if w.endswith("n't", lo, hi) and hi - lo > 3:
            return "n't"
        for clitic in _CLITICS:
            if w.endswith(clitic, lo, hi) and hi - lo > len(clitic):
                return clitic
        if self.possessive_end(lo, hi):
            return "'"
        return None


@lru_cache(maxsize=1 << 14)  # a character's category, looked up once (bounded: any text may come)
def _is_punct(c: str) -> bool:
    return unicodedata.category(c).startswith("P") or c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def whitespace_tokens(text: str) -> list[str]:
    """`normalize: false`: the text split on whitespace, nothing else."""
    return text.split()
