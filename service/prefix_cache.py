"""A bounded LRU of LSTM states keyed by token-id prefixes: type-ahead pays one step per new word.

`/next-word` for "the stock market" after "the stock" finds the state cached after "<eos> the stock" and runs
the LSTM over "market" only. Lookups find the longest cached prefix in time linear in the prefix length: each
prefix is keyed by a chained hash of its ids, and a hit is confirmed against the stored ids, so a hash
collision can cost a miss but never a wrong state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor

from lm.model import State


def prefix_hashes(ids: Sequence[int]) -> list[int]:
    """hashes[i] identifies ids[: i + 1]."""
    out, h = [], 0
    for t in ids:
        h = hash((h, t))
        out.append(h)
    return out


class PrefixStateCache:
    """At most `max_entries` states (h, c), each (L, H), of the prefixes seen last; `max_entries=0` keeps none.

    Used from one thread at a time (the engine's forward-pass thread).
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, int], tuple[tuple[int, ...], State]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: Sequence[int], hashes: Sequence[int] | None = None) -> tuple[int, State | None]:
        """(n, state after ids[:n]) for the longest cached prefix of `ids` (n <= len(ids)), or (0, None).

        `hashes`: `prefix_hashes(ids)` if the caller has them already."""
        if not self._entries:
            return 0, None
        hashes = prefix_hashes(ids) if hashes is None else hashes
        for n in range(len(ids), 0, -1):
            key = (n, hashes[n - 1])
            entry = self._entries.get(key)
            if entry is not None and entry[0] == tuple(ids[:n]):
                self._entries.move_to_end(key)
                return n, entry[1]
        return 0, None

    def put(self, ids: Sequence[int], state: tuple[Tensor, Tensor], hashes: Sequence[int] | None = None) -> None:
        """Remember the state after all of `ids`; the least recently used entry goes when full."""
        if self.max_entries == 0 or not ids:
            return
        key = (len(ids), (prefix_hashes(ids) if hashes is None else hashes)[-1])
        self._entries[key] = (tuple(ids), (state[0].clone(), state[1].clone()))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
