"""Range coding of a batch of token chunks with the predictor's probabilities.

Every chunk has its own range coder. The decoder steps all chunks of a batch in lockstep: at
step t the predictor gives each row's distribution for token t, the decoder decodes it and
feeds it back. An exact predictor gives the same numbers for many positions at once (teacher
forcing), so its encoder steps the batch's rows many positions per forward; a float
predictor's encoder must run the decoder's lockstep computation itself (`_lockstep` drives
both directions).

With side models (`side/`, exact predictors only) a batch also has one stream of flags (was
the match model's guess right?) in the decoder's lockstep order; the batch's first coded chunk
carries it before its tokens (varint byte count, then the flags). One flag stream per batch, not
per chunk: a stream's last word is overhead. Both directions step the side models through the
same calls in the same order (`side/stage.py`): the encoder over each teacher-forced block's
positions before it codes their tokens, the decoder at each step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, TypeVar

import constriction
import numpy as np

from .container import Reader, varint
from .drafts import Lookup
from .errors import CorruptArchiveError
from .predictor import ExactPredictor
from .side import match
from .side.stage import SideModels
from .tokenization import TokenRoles

if TYPE_CHECKING:
    from .float_predictor import FloatPredictor

    Predictor = ExactPredictor | FloatPredictor

# Fast quantization: every symbol gets at least the smallest representable probability.
CODER_MODEL = constriction.stream.model.Categorical(perfect=False)
MIN_PROBABILITY = 2.0**-24  # constriction's default range coder has 24-bit probabilities


@cache
def _load_numpy_api() -> None:
    """Make constriction load NumPy's C API now. Its Rust side loads it on the first array it
    sees, running Python code (a NumPy version check); a Ctrl-C landing there becomes a Rust
    panic with a traceback instead of KeyboardInterrupt. So load it here, with SIGINT held."""
    handler = signal.getsignal(signal.SIGINT)
    hold = threading.current_thread() is threading.main_thread() and handler is not None
    held: list[int] = []
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        constriction.stream.queue.RangeEncoder().encode(np.zeros(1, np.int32), CODER_MODEL, np.ones((1, 2)) / 2)
    finally:
        if hold:
            signal.signal(signal.SIGINT, handler)
    if held:
        signal.raise_signal(signal.SIGINT)  # to the handler restored


Progress = Callable[[np.ndarray], None]  # called with the symbols coded at each step
MAX_PAUSE = 64  # most steps a decoder goes without drafts after its drafts failed
T = TypeVar("T")


def _lockstep(
    predictor: Predictor,
    lengths: np.ndarray,
    roles: TokenRoles,
    code_step: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    progress: Progress | None,
) -> None:
    """Advance every row until it has `lengths[row]` tokens; `code_step(t, active_rows, probs)`
    codes token t of the active rows and returns those tokens."""
    steps = int(lengths.max(initial=0))
    predictor.start(len(lengths), steps, lengths)
    inputs = np.full(len(lengths), roles.start_id, dtype=np.int64)
    for t in range(steps):
        probs = predictor.step(inputs)
        active = np.flatnonzero(lengths > t)
        symbols = np.full(len(lengths), roles.start_id, dtype=np.int64)  # idle rows: start_id
        symbols[active] = code_step(t, active, probs)
        inputs = roles.model_inputs(symbols)
        if progress:
            progress(symbols[active])


def _drafted_lockstep(
    predictor: ExactPredictor,
    lengths: np.ndarray,
    roles: TokenRoles,
    code_step: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    progress: Progress | None,
    lookup: Lookup,
) -> None:
    """`_lockstep` for the decoder of an exact predictor: where every active row has drafted
    tokens (`lookup`, over the tokens code_step decodes), one forward scores them all, and the
    steps go on through its positions while every row's draft was right. Steps, and everything
    code_step does in them, come in the same order as `_lockstep`'s."""
    steps = int(lengths.max(initial=0))
    predictor.start(len(lengths), steps, lengths)
    inputs = np.full(len(lengths), roles.start_id, dtype=np.int64)
    t, pause, wait = 0, 1, 0  # after a forward whose drafts all failed, `wait` steps without drafts (doubling)
    while t < steps:
        active = np.flatnonzero(lengths > t)
        computed = int(active[-1]) + 1  # the rows after the last active one have ended: not computed
        most = 0 if wait else min(predictor.drafts(computed), steps - t - 1)
        drafts = [lookup.draft(r, t, most) for r in active]
        width = min(len(d) for d in drafts)
        guesses = np.full((computed, width), roles.start_id, dtype=np.int64)  # idle rows: start_id
        for r, d in zip(active, drafts, strict=True):
            guesses[r] = d[:width]
        probs = predictor.score(np.concatenate([inputs[:computed, None], roles.model_inputs(guesses)], 1))
        for j in range(width + 1):
            active = np.flatnonzero(lengths > t)
            symbols = np.full(len(lengths), roles.start_id, dtype=np.int64)
            symbols[active] = code_step(t, active, np.ascontiguousarray(probs[:, j]))
            inputs = roles.model_inputs(symbols)
            if progress:
                progress(symbols[active])
            t += 1
            if j == width or not np.array_equal(symbols[active], guesses[active, j]):
                break
        predictor.advance(j + 1)
        if width:  # drafts that keep failing (prose) cost more than they settle: try them less often
            pause = 1 if j else min(2 * pause, MAX_PAUSE)
            wait = 0 if j else pause
        else:
            wait = max(0, wait - 1)


def _row_lengths(predictor: Predictor, lengths: list[int]) -> np.ndarray:
    """Tokens per row: one row per chunk (a float predictor pads with idle rows to its own count)."""
    rows = len(lengths) if predictor.exact else predictor.rows
    if len(lengths) > rows:
        raise ValueError("more chunks than rows")
    return np.array(lengths + [0] * (rows - len(lengths)), dtype=np.int64)


def ideal_bits(probs: np.ndarray, symbols: np.ndarray) -> float:
    """Sum of -log2 p of `symbols` (one per row) under rows of unnormalized probabilities."""
    chosen = probs[np.arange(len(symbols)), symbols] / probs.sum(1, dtype=np.float64)
    return -float(np.log2(np.maximum(chosen, MIN_PROBABILITY)).sum())


def _words(encoder: constriction.stream.queue.RangeEncoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes()


def _decoder(words: bytes) -> constriction.stream.queue.RangeDecoder:
    if len(words) % 4:
        raise CorruptArchiveError("coded chunk length is not a multiple of 4 bytes")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))


def _runs(mask: np.ndarray) -> list[slice]:
    """The runs of True in a boolean array, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    return [slice(a, b) for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)]


def _encode_span(
    encoder: constriction.stream.queue.RangeEncoder, probs: np.ndarray, symbols: np.ndarray, guessed: np.ndarray | None
) -> float:
    """Code a run of one chunk's positions; return its ideal bits. Positions `guessed` right by
    the match model are coded by their flag alone (SideModels.flag)."""
    bits = 0.0
    for run in [slice(0, len(probs))] if guessed is None else _runs(~guessed):
        encoder.encode(symbols[run].astype(np.int32), CODER_MODEL, probs[run])
        bits += ideal_bits(probs[run], symbols[run])
    return bits


def _encode_forced(
    predictor: ExactPredictor,
    chunks: list[np.ndarray],
    roles: TokenRoles,
    progress: Progress | None,
    side_models: int,
) -> tuple[list[bytes], bytes, float]:
    """The chunks coded from teacher-forced probabilities, all in lockstep as the decoder steps
    them, many positions per forward; with side models, they step through each block's positions
    in the decoder's order before its tokens are coded. Returns each chunk's coded tokens, the
    batch's flags and the ideal bits."""
    live = [r for r, c in enumerate(chunks) if len(c)]  # an empty chunk's row stays idle
    encoders = [constriction.stream.queue.RangeEncoder() for _ in chunks]
    side = SideModels(side_models, predictor.alphabet_size, [chunks[r] for r in live]) if side_models else None
    guessed = [np.zeros(len(chunks[r]), dtype=bool) for r in live]  # positions guessed right
    flags: list[int] = []
    flag_probs: list[int] = []  # P(right) of each flag, over 2**16
    bits = 0.0
    if live:
        lengths = np.array([len(chunks[r]) for r in live], dtype=np.int64)
        inputs = np.full((len(live), int(lengths.max())), roles.start_id, dtype=np.int64)
        targets = np.full_like(inputs, -1)  # each row's token at each step, -1 past its end
        for k, r in enumerate(live):
            inputs[k, 1 : lengths[k]] = roles.model_inputs(chunks[r][:-1])
            targets[k, : lengths[k]] = chunks[r]
        predictor.start(len(live), inputs.shape[1], lengths)
        first = 0
        for probs in predictor.forced(inputs, roles.model_inputs(targets)):
            for t in range(first, first + probs.shape[1]) if side else ():
                step, active = probs[:, t - first], np.flatnonzero(lengths > t)
                for guess in side.weigh(t, active, step):
                    right = bool(guess.token == targets[guess.row, t])

                    def record(p: int, right: bool = right) -> bool:
                        flags.append(int(right))
                        flag_probs.append(p)
                        return right

                    guessed[guess.row][t] = side.flag(guess, step, record)
                side.learn(t, active, targets[active, t])
            coded = []
            for k, r in enumerate(live):
                span = slice(first, min(first + probs.shape[1], int(lengths[k])))
                if span.start < span.stop:
                    right = guessed[k][span] if side else None
                    bits += _encode_span(encoders[r], probs[k, : span.stop - span.start], chunks[r][span], right)
                    coded.append(chunks[r][span])
            first += probs.shape[1]
            if progress and coded:
                progress(np.concatenate(coded))
    flag_encoder = constriction.stream.queue.RangeEncoder()
    if flags:
        flag_encoder.encode(np.array(flags, dtype=np.int32), CODER_MODEL, _flag_probs(flag_probs))
        right = np.array(flags, dtype=bool)
        p = np.array(flag_probs, dtype=np.float64)
        bits -= float(np.log2(np.where(right, p, match.ONE - p) / match.ONE).sum())
    tokens = [_words(e) if len(c) else b"" for e, c in zip(encoders, chunks, strict=True)]
    return tokens, _words(flag_encoder) if side else b"", bits


def _flag_probs(p: list[int]) -> np.ndarray:
    """Rows of weights for flags whose chance of 1 (the guess is right) is p / 2**16."""
    right = np.array(p, dtype=np.float64)
    return np.stack([match.ONE - right, right], 1)


def encode_batch(
    predictor: Predictor,
    chunks: list[np.ndarray],
    roles: TokenRoles,
    progress: Progress | None = None,
    side_models: int = 0,
) -> tuple[list[bytes], bytes, float]:
    """Code each chunk (an empty chunk leaves its row idle); return each chunk's coded tokens,
    the batch's flags and the ideal code length, sum of -log2 p over the coded tokens and
    flags, in bits. With side models (their version: exact predictors only) `carry_flags` then
    puts the flags where the decoder reads them; without, the flags are empty."""
    _load_numpy_api()
    if predictor.exact:
        return _encode_forced(predictor, chunks, roles, progress, side_models)
    encoders = [constriction.stream.queue.RangeEncoder() for _ in chunks]
    bits = 0.0

    def code_step(t: int, active: np.ndarray, probs: np.ndarray) -> np.ndarray:
        nonlocal bits
        symbols = np.array([chunks[r][t] for r in active], dtype=np.int64)
        for r in active:
            encoders[r].encode(chunks[r][t : t + 1].astype(np.int32), CODER_MODEL, probs[r : r + 1])
        bits += ideal_bits(probs[active], symbols)
        return symbols

    _lockstep(predictor, _row_lengths(predictor, [len(c) for c in chunks]), roles, code_step, progress)
    return [_words(enc) for enc in encoders], b"", bits


def _carrier(lengths: list[int]) -> int | None:
    """The row whose payload carries the batch's flags: the first with tokens to code."""
    return next((row for row, n in enumerate(lengths) if n), None)


def carry_flags(payloads: list[bytes], flags: bytes, lengths: list[int]) -> list[bytes]:
    """The payloads as stored: the first with tokens (`lengths`) gets the batch's flags before
    its tokens, as a varint byte count and the flag words."""
    payloads = list(payloads)
    if (carrier := _carrier(lengths)) is not None:
        payloads[carrier] = varint(len(flags)) + flags + payloads[carrier]
    return payloads


def _split(payload: bytes) -> tuple[bytes, bytes]:
    """The flag-carrying payload's flags and tokens."""
    reader = Reader(payload)
    try:
        flags = reader.take(reader.varint(len(payload)))
    except CorruptArchiveError as e:
        raise CorruptArchiveError("coded chunk has a damaged flag stream length") from e
    return flags, payload[reader.pos :]


def decode_batch(
    predictor: Predictor,
    payloads: list[bytes],
    lengths: list[int],
    roles: TokenRoles,
    progress: Progress | None = None,
    side_models: int = 0,
) -> list[np.ndarray]:
    """Decode `lengths[i]` tokens from each payload (length 0 leaves the row idle), with the
    side models of version `side_models` (0: none) as the encoder coded them."""
    _load_numpy_api()
    payloads, flags = list(payloads), b""
    if side_models and (carrier := _carrier(lengths)) is not None:
        flags, payloads[carrier] = _split(payloads[carrier])
    flag_decoder = _decoder(flags)
    decoders = [_decoder(words) for words in payloads]
    tokens = [np.zeros(n, dtype=np.int64) for n in lengths]
    side = SideModels(side_models, predictor.alphabet_size, tokens) if side_models else None

    def read_flag(p: int) -> bool:
        return _checked(lambda: flag_decoder.decode(CODER_MODEL, _flag_probs([p]))[0] == 1)

    def code_step(t: int, active: np.ndarray, probs: np.ndarray) -> np.ndarray:
        known = {g.row: g.token for g in side.weigh(t, active, probs) if side.flag(g, probs, read_flag)} if side else {}
        for r in active:
            if r in known:
                tokens[r][t] = known[r]
            else:
                tokens[r][t] = _checked(lambda r=r: decoders[r].decode(CODER_MODEL, probs[r : r + 1])[0])
        coded = np.array([tokens[r][t] for r in active], dtype=np.int64)
        if side:
            side.learn(t, active, coded)
        return coded

    rows = _row_lengths(predictor, list(lengths))
    if isinstance(predictor, ExactPredictor) and not predictor.learner:
        _drafted_lockstep(predictor, rows, roles, code_step, progress, Lookup(tokens))
    else:
        _lockstep(predictor, rows, roles, code_step, progress)
    return tokens


def _checked(read: Callable[[], T]) -> T:
    """A range decoder's read, its failures on damaged data as CorruptArchiveError."""
    try:
        return read()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CorruptArchiveError(f"coded chunk cannot be decoded: {e}") from e
