"""Compression levels, in zstd's and xz's convention (-1 fastest ... -9 smallest): each sets the
chunk size (tokens coded in one sequence, one row of a decoding step) and the attention window
(tokens each token sees, besides the first: `predictor.ExactPredictor`), whether side models
(`side/`) code along, and whether the weights learn as they code (`exact/learning.py`).

Longer chunks restart the context less often and a longer window sees more of it; both cost
time: a window of 2048 makes a decoding step about 1.5x as long as one of 1024 (SmolLM2, 60
rows), and longer chunks leave fewer rows to step together on small inputs. With a window, a
token costs the same however long its chunk is, so a level's chunks grow on large inputs
(`chunk_size_for`). `--model auto` weighs a slower model's bits against its time by level.
Figures per level: benchmarks/levels.py and README's levels table.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import versions
from .chunking import DEFAULT_BATCH_SIZE
from .errors import InvalidOptionError

# The longest chunk where the forward pins the sinks before the window (a query then sees no key
# farther than the window, so chunks may outrun the model's context): its rotary table is 32 MB
# for SmolLM2, and an input of 64 such chunks is 16 MB of text.
MAX_STREAM = 1 << 16
SINK_TOKENS = 4  # with a window, the sequence's first tokens stay attended (StreamingLLM keeps 4)


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
    # `--model auto` takes a slower built-in model where its probe codes at least this many
    # percent fewer bits (model_choice.py): at the default, languages SmolLM2 barely knows, not English
    auto_gain: int = 20


LEVELS = {
    1: Level(1024, None, side=False),  # cold chunks, llmzip 0.2's only setting
    2: Level(2048, 512),
    3: Level(2048, 1024),
    4: Level(4096, 512),
    5: Level(4096, 768),
    6: Level(4096, 1024),
    7: Level(7680, 1024, auto_gain=10),
    8: Level(7680, 2048, auto_gain=10),
    # one stream per 2**16 tokens (the sinks pinned: past the context)
    9: Level(MAX_STREAM, 4096, half_context=True, learn=True, auto_gain=0),
}
DEFAULT_LEVEL = 6
FASTEST, BEST = min(LEVELS), max(LEVELS)
# Rows a decoding step needs before its cost per row levels off: a default batch (SmolLM2, window
# 1024, 8-bit keys, Intel Xeon AVX-512, one process: 4.92 ms per row at 38 rows, 4.47 at 64).
STEP_ROWS = DEFAULT_BATCH_SIZE


def geometry(
    level: int, context: int, forward: str | None, chunk_size: int | None = None, window: int | None = None
) -> tuple[int, int | None]:
    """Chunk size and window at `level` for a model of `context` positions computed by the exact
    `forward` (None: a float forward, which has no window, so there the level's window is its
    chunk size): those given, else the level's (its window up to half the context where the level
    says), its chunks no longer than `longest_chunk`."""
    settings = LEVELS[level]
    if forward is None:
        return chunk_size or settings.window or settings.chunk_size, None
    if window is None:
        window = max(settings.window, context // 2) if settings.half_context else settings.window
    if chunk_size is None:
        chunk_size = min(settings.chunk_size, longest_chunk(context, forward, window))
    return chunk_size, window


def fitting_chunk(context: int) -> int:
    """The longest chunk within a model's context of `context` positions: 15/16 of it (the rest
    for steering)."""
    return (context - 1) * 15 // 16


def longest_chunk(context: int, forward: str, window: int | None) -> int:
    """The longest chunk a level codes: one within the context, or MAX_STREAM tokens where
    `forward` pins the sinks before a window that fits there."""
    pins = versions.pins_sinks(forward, window) and window + SINK_TOKENS <= fitting_chunk(context)
    return MAX_STREAM if pins else fitting_chunk(context)


def chunk_size_for(chunk_size: int, window: int | None, tokens: int, longest: int) -> int:
    """Tokens per chunk for an input of `tokens` tokens at a level of `chunk_size` and `window`.
    With a window, longer chunks cost no time per token and save cold starts, but leave fewer
    rows to step together: chunks grow, up to `longest`, while the input still fills STEP_ROWS
    of them."""
    if window is None:
        return chunk_size
    return max(chunk_size, min(longest, -(-tokens // STEP_ROWS)))


def check_context(context: int, forward: str, prefix_length: int, chunk_size: int, window: int | None) -> None:
    """What a query attends must fit the model's `context`: the steering prefix and a chunk, or
    where `forward` pins the sinks before a shorter window, the prefix, sinks and window. The
    encoder checks its options, the decoder an archive's longest chunk (a window as long is not
    recorded)."""
    span, what = chunk_size, "chunk size"
    if versions.pins_sinks(forward, window) and window + SINK_TOKENS < chunk_size:
        span, what = window + SINK_TOKENS, "window plus sinks"
    if span + prefix_length >= context:  # the start token takes one position
        raise InvalidOptionError(
            f"{what} plus steering prefix ({span} + {prefix_length} tokens) must be below "
            f"{context} tokens, this model's context"
        )
