"""Drafted tokens for the decoder: each row's next tokens guessed from its own history ("prompt
lookup"): the tokens that followed the latest earlier occurrence of its last 4 to 6 tokens.

A decoding step scores the drafts in one forward and keeps them up to the first wrong one
(`coding.decode_batch`). The exact forward gives every position the same bits whichever other
positions it computes with, so drafts change how many forwards a decoder runs, never what it
decodes. benchmarks/drafts.py measures what they settle per kind of file.
"""

from __future__ import annotations

import numpy as np

# n-gram lengths looked up, longest first. Shorter matches guess worse than a forward of drafts
# costs: the first draft of a 2-token match is right 24% of the time in English prose, of a 6-token
# one 68% (alice29.txt; in the Apache log 45% and 95%; benchmarks/drafts.py).
SHORTEST, LONGEST = 4, 6


class Lookup:
    """Drafts for rows whose tokens are decoded into `tokens` (one array per row, filled in order)."""

    def __init__(self, tokens: list[np.ndarray], shortest: int = SHORTEST) -> None:
        """`shortest`: the fewest tokens a match has (benchmarks/drafts.py compares others)."""
        self.tokens, self.shortest = tokens, shortest
        self.latest: list[dict[tuple[int, ...], int]] = [
            {} for _ in tokens
        ]  # an n-gram -> where its latest occurrence ends
        self.indexed = [shortest] * len(tokens)  # each row's n-grams ending before this are indexed

    def draft(self, row: int, t: int, most: int) -> np.ndarray:
        """Up to `most` guesses of the row's tokens t, t+1, ..., from its tokens before t."""
        ids, latest = self.tokens[row], self.latest[row]
        first = max(0, min(self.indexed[row], t) - LONGEST)
        recent = ids[first:t].tolist()  # what the lookup and the new n-grams read, from position `first`
        for end in range(self.indexed[row], t):  # n-grams ending before the suffix: never its own draft
            for n in range(self.shortest, min(LONGEST, end) + 1):
                latest[tuple(recent[end - first - n : end - first])] = end
        self.indexed[row] = max(self.indexed[row], t)
        for n in range(min(LONGEST, t), self.shortest - 1, -1):
            end = latest.get(tuple(recent[t - first - n :]))
            if end is not None:
                return ids[end : min(end + most, t)]
        return ids[:0]
