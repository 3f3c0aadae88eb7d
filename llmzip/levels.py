"""Compression levels, in zstd's and xz's convention (-1 fastest ... -9 smallest): each sets the
chunk size (tokens coded in one sequence, one row of a decoding step) and the attention window
(tokens each token sees, besides the first: `predictor.ExactPredictor`), whether side models
(`side/`) code along, and whether the weights learn as they code (`exact/learning.py`).

Longer chunks restart the context less often and a longer window sees more of it; both cost
time: a window of 2048 makes a decoding step about 1.5x as long as one of 1024 (SmolLM2, 60
rows), and longer chunks leave fewer rows to step together on small inputs. With a window, a
token costs the same however long its chunk is, so a level's chunks grow on large inputs
(`chunk_size_for`). Figures per level: benchmarks/levels.py and README's levels table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunking import DEFAULT_BATCH_SIZE

# The longest chunk where the forward pins the sinks before the window (a query then sees no key
# farther than the window, so chunks may outrun the model's context): its rotary table is 32 MB
# for SmolLM2, and an input of 64 such chunks is 16 MB of text.
MAX_STREAM = 1 << 16


@dataclass(frozen=True)
class Level:
    chunk_size: int  # tokens; with a window, the least (`chunk_size_for`)
    window: int | None  # tokens; None: each token sees its whole chunk
    side: bool = True  # side models: adaptive bias, token n-grams, match model, adaptive map (side/)
    # the window grows to half the model's context where that is longer: Gemma 3's 32 768 positions
    # give 16 384 (alice29.txt at -9: -0.9% against 4096, compress 1.5x as long)
    half_context: bool = False
    # the weights learn as they code where the model can (exact/learning.py: the exact predictor of a
    # Llama model): enwik5 at -9 with SmolLM2 2.8% smaller, coding an order of magnitude slower
    learn: bool = False


LEVELS = {
    1: Level(1024, None, side=False),  # cold chunks, llmzip 0.2's only setting
    2: Level(2048, 512),
    3: Level(2048, 1024),
    4: Level(4096, 512),
    5: Level(4096, 768),
    6: Level(4096, 1024),
    7: Level(7680, 1024),
    8: Level(7680, 2048),
    # one stream per 2**16 tokens (the sinks pinned: past the context)
    9: Level(MAX_STREAM, 4096, half_context=True, learn=True),
}
DEFAULT_LEVEL = 6
FASTEST, BEST = min(LEVELS), max(LEVELS)
# Rows a decoding step needs before its cost per row levels off: a default batch (SmolLM2, window
# 1024, 8-bit keys, Intel Xeon AVX-512, one process: 4.92 ms per row at 38 rows, 4.47 at 64).
STEP_ROWS = DEFAULT_BATCH_SIZE


def chunk_size_for(chunk_size: int, window: int | None, tokens: int, longest: int) -> int:
    """Tokens per chunk for an input of `tokens` tokens at a level of `chunk_size` and `window`.
    With a window, longer chunks cost no time per token and save cold starts, but leave fewer
    rows to step together: chunks grow, up to `longest`, while the input still fills STEP_ROWS
    of them."""
    if window is None:
        return chunk_size
    return max(chunk_size, min(longest, -(-tokens // STEP_ROWS)))
