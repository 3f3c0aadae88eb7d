"""Range coding of a batch of token chunks with the predictor's probabilities.

Every chunk has its own range coder. The decoder steps all chunks of a batch in lockstep: at
step t the predictor gives each row's distribution for token t, the decoder decodes it and
feeds it back. An exact predictor gives the same numbers for many positions at once (teacher
forcing), so its encoder steps the batch's rows many positions per forward; a float
predictor's encoder must run the decoder's lockstep computation itself (`_lockstep` drives
both directions).

With side models (`side/`, exact predictors only) a batch also has one stream of flags (was
the guess right?) in the decoder's lockstep order, the order the adaptive map learns in; the
batch's first coded chunk carries it before its tokens (varint byte count, then the flags). The
encoder takes the guesses from the tokens first, codes each chunk's tokens teacher-forced, and
then the flags. One flag stream per batch, not per chunk: a stream's last word is overhead.
From side models version 3 an adaptive bias (`side/bias.py`) corrects the model's weights first,
learning from each step's rows: what the encoder's lockstep forward is for; from version 4 token
n-grams (`side/ngrams.py`) are mixed in next, learning the same way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import constriction
import numpy as np

from .container import Reader, varint
from .errors import CorruptArchiveError
from .predictor import ExactPredictor, Predictor
from .side import match
from .side.bias import AdaptiveBias
from .side.ngrams import NgramMixer
from .tokenization import TokenRoles

# Fast quantization: every symbol gets at least the smallest representable probability.
CODER_MODEL = constriction.stream.model.Categorical(perfect=False)
MIN_PROBABILITY = 2.0**-24  # constriction's default range coder has 24-bit probabilities


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


_load_numpy_api()

Progress = Callable[[np.ndarray], None]  # called with the symbols coded at each step


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
    encoder: constriction.stream.queue.RangeEncoder,
    probs: np.ndarray,
    symbols: np.ndarray,
    guess: np.ndarray | None,
    guess_probs: np.ndarray | None,
) -> float:
    """Code a run of one chunk's positions; return its ideal bits. With the match model's
    guesses, a right guess codes no token and a wrong one codes it without the guess; the
    model's probability of each guess goes to `guess_probs` (match.guess_probabilities)."""
    coded = [slice(0, len(probs))]
    if guess is not None and guess_probs is not None:
        has = np.flatnonzero(guess >= 0)
        guess_probs[has] = match.guess_probabilities(probs, has, guess[has])
        wrong = has[guess[has] != symbols[has]]
        probs[wrong, guess[wrong]] = 0.0  # the predictor's buffer, rewritten by its next block
        coded = _runs(guess != symbols)
    bits = 0.0
    for run in coded:
        encoder.encode(symbols[run].astype(np.int32), CODER_MODEL, probs[run])
        bits += ideal_bits(probs[run], symbols[run])
    return bits


def _encode_forced(
    predictor: ExactPredictor,
    chunks: list[np.ndarray],
    roles: TokenRoles,
    progress: Progress | None,
    guessed: list[np.ndarray | None],
    head: AdaptiveBias | None,
    mixed: bool,
) -> tuple[list[bytes], float, list[np.ndarray | None]]:
    """The chunks coded from teacher-forced probabilities, all in lockstep as the decoder steps
    them, many positions per forward; an adaptive bias (and, if `mixed`, token n-grams) learns
    from each step's rows in the decoder's order. Returns each chunk's coded tokens, the ideal
    bits, and the model's probability of each guess (where `guessed`)."""
    live = [r for r, c in enumerate(chunks) if len(c)]  # an empty chunk's row stays idle
    encoders = [constriction.stream.queue.RangeEncoder() for _ in chunks]
    guess_probs = [None if g is None else np.zeros(len(g), dtype=np.int64) for g in guessed]
    if not live:
        return [b""] * len(chunks), 0.0, guess_probs
    lengths = np.array([len(chunks[r]) for r in live], dtype=np.int64)
    inputs = np.full((len(live), int(lengths.max())), roles.start_id, dtype=np.int64)
    targets = np.full_like(inputs, -1)  # each row's token at each step, -1 past its end
    for k, r in enumerate(live):
        inputs[k, 1 : lengths[k]] = roles.model_inputs(chunks[r][:-1])
        targets[k, : lengths[k]] = chunks[r]
    mixer = NgramMixer([chunks[r] for r in live]) if mixed else None
    bits = 0.0
    predictor.start(len(live), inputs.shape[1], lengths)
    first = 0
    for probs in predictor.forced(inputs, roles.model_inputs(targets)):
        if head is not None:
            for t in range(first, first + probs.shape[1]):
                step, active = probs[:, t - first], np.flatnonzero(lengths > t)
                head.apply(step, lengths > t)
                mixture = mixer.mix(t, active, step) if mixer else {}
                head.learn(targets[active, t])
                if mixer:
                    mixer.learn(t, active, mixture)
        coded = []
        for k, r in enumerate(live):
            span = slice(first, min(first + probs.shape[1], int(lengths[k])))
            if span.start < span.stop:
                guess, out = (None, None) if guessed[r] is None else (guessed[r][span], guess_probs[r][span])
                bits += _encode_span(encoders[r], probs[k, : span.stop - span.start], chunks[r][span], guess, out)
                coded.append(chunks[r][span])
        first += probs.shape[1]
        if progress and coded:
            progress(np.concatenate(coded))
    return [_words(e) if len(c) else b"" for e, c in zip(encoders, chunks, strict=True)], bits, guess_probs


def _flag_probs(p: list[int]) -> np.ndarray:
    """Rows of weights for flags whose chance of 1 (the guess is right) is p / 2**16."""
    right = np.array(p, dtype=np.float64)
    return np.stack([match.ONE - right, right], 1)


def _encode_flags(
    adaptive: match.AdaptiveMap,
    chunks: list[np.ndarray],
    guessed: list[np.ndarray],
    match_lengths: list[np.ndarray],
    guess_probs: list[np.ndarray],
) -> tuple[bytes, float]:
    """The batch's flags in the decoder's lockstep order, with the map learning along."""
    flags: list[int] = []
    probs: list[int] = []
    bits = 0.0
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    for t in range(int(lengths.max(initial=0))):
        for row in np.flatnonzero(lengths > t):
            if guessed[row][t] < 0:
                continue
            p, where = adaptive.predict(int(match_lengths[row][t]), int(guess_probs[row][t]))
            right = bool(guessed[row][t] == chunks[row][t])
            adaptive.update(where, right)
            flags.append(int(right))
            probs.append(p)
            bits -= np.log2((p if right else match.ONE - p) / match.ONE)
    encoder = constriction.stream.queue.RangeEncoder()
    if flags:
        encoder.encode(np.array(flags, dtype=np.int32), CODER_MODEL, _flag_probs(probs))
    return _words(encoder), float(bits)


def encode_batch(
    predictor: Predictor,
    chunks: list[np.ndarray],
    roles: TokenRoles,
    progress: Progress | None = None,
    adaptive: match.AdaptiveMap | None = None,
    biased: bool = False,
    mixed: bool = False,
) -> tuple[list[bytes], bytes, float]:
    """Code each chunk (an empty chunk leaves its row idle); return each chunk's coded tokens,
    the batch's flags and the ideal code length, sum of -log2 p over the coded tokens and
    flags, in bits. With an adaptive map (exact predictors) the side models code along, the
    map learns, and `carry_flags` then puts the flags where the decoder reads them; without,
    the flags are empty. `biased`: with the batch's adaptive bias, `mixed`: and its token n-grams
    (exact predictors)."""
    if predictor.exact:
        guessed, match_lengths = match.guesses(chunks) if adaptive else ([None] * len(chunks), None)
        head = AdaptiveBias(predictor.alphabet_size) if biased else None
        tokens, bits, guess_probs = _encode_forced(predictor, chunks, roles, progress, guessed, head, mixed)
        if adaptive is None:
            return tokens, b"", bits
        flags, flag_bits = _encode_flags(adaptive, chunks, guessed, match_lengths, guess_probs)
        return tokens, flags, bits + flag_bits
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
    adaptive: match.AdaptiveMap | None = None,
    biased: bool = False,
    mixed: bool = False,
) -> list[np.ndarray]:
    """Decode `lengths[i]` tokens from each payload (length 0 leaves the row idle); with an
    adaptive map, as the side models coded them (the map learns along); `biased`: with the
    batch's adaptive bias, `mixed`: and its token n-grams."""
    payloads, flags = list(payloads), b""
    if adaptive and (carrier := _carrier(lengths)) is not None:
        flags, payloads[carrier] = _split(payloads[carrier])
    flag_decoder = _decoder(flags)
    decoders = [_decoder(words) for words in payloads]
    tokens = [np.zeros(n, dtype=np.int64) for n in lengths]
    matches = match.MatchModel(tokens)
    head = AdaptiveBias(predictor.alphabet_size) if biased else None
    mixer = NgramMixer(tokens) if mixed else None

    def code_step(t: int, active: np.ndarray, probs: np.ndarray) -> np.ndarray:
        if head:
            learning = np.zeros(len(probs), dtype=bool)
            learning[active] = True
            head.apply(probs, learning)
        mixture = mixer.mix(t, active, probs) if mixer else {}
        guesses = {r: g for r in active if adaptive and (g := matches.guess(r, t)) is not None}
        rows = np.array(list(guesses), dtype=np.int64)
        chances = match.guess_probabilities(probs, rows, np.array([g for g, _ in guesses.values()], np.int64))
        for r in active:
            try:
                if r in guesses:
                    guess, length = guesses[r]
                    p, where = adaptive.predict(length, int(chances[np.searchsorted(rows, r)]))
                    right = flag_decoder.decode(CODER_MODEL, _flag_probs([p]))[0] == 1
                    adaptive.update(where, right)
                    if right:
                        tokens[r][t] = guess
                        continue
                    probs[r, guess] = 0.0  # the predictor's buffer, rewritten by its next step
                tokens[r][t] = decoders[r].decode(CODER_MODEL, probs[r : r + 1])[0]
            except (ValueError, RuntimeError, AssertionError) as e:
                raise CorruptArchiveError(f"coded chunk cannot be decoded: {e}") from e
        coded = np.full(len(probs), -1, dtype=np.int64)  # idle rows: -1
        coded[active] = [tokens[r][t] for r in active]
        if head:
            head.learn(coded[active])
        if mixer:
            mixer.learn(t, active, mixture)
        if adaptive:
            matches.advance(t, active)
        return coded[active]

    _lockstep(predictor, _row_lengths(predictor, list(lengths)), roles, code_step, progress)
    return tokens
