"""Range coding of a batch of token chunks with the predictor's probabilities.

Every chunk has its own range coder. The decoder steps all chunks of a batch in lockstep: at
step t the predictor gives each row's distribution for token t, the decoder decodes it and
feeds it back. An exact predictor gives the same numbers for a whole chunk at once (teacher
forcing), so its encoder codes chunk by chunk from many positions per forward; a float
predictor's encoder must run the decoder's lockstep computation itself (`_lockstep` drives
both directions).
"""

from __future__ import annotations

from collections.abc import Callable

import constriction
import numpy as np

from .errors import CorruptArchiveError
from .predictor import ExactPredictor, Predictor
from .tokenization import TokenRoles

# Fast quantization: every symbol gets at least the smallest representable probability.
CODER_MODEL = constriction.stream.model.Categorical(perfect=False)
MIN_PROBABILITY = 2.0**-24  # constriction's default range coder has 24-bit probabilities

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
    predictor.start(len(lengths), steps)
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


def _encode_forced(
    predictor: ExactPredictor, chunk: np.ndarray, roles: TokenRoles, progress: Progress | None
) -> tuple[bytes, float]:
    """One chunk coded from teacher-forced probabilities, many positions per forward."""
    encoder = constriction.stream.queue.RangeEncoder()
    bits = 0.0
    predictor.start(1, len(chunk))
    inputs = np.concatenate([[roles.start_id], roles.model_inputs(chunk[:-1])]).astype(np.int64)
    first = 0
    for probs in predictor.forced(inputs):
        symbols = chunk[first : first + len(probs)]
        encoder.encode(symbols.astype(np.int32), CODER_MODEL, probs)
        bits += ideal_bits(probs, symbols)
        first += len(probs)
        if progress:
            progress(symbols)
    return encoder.get_compressed().astype("<u4").tobytes(), bits


def encode_batch(
    predictor: Predictor, chunks: list[np.ndarray], roles: TokenRoles, progress: Progress | None = None
) -> tuple[list[bytes], float]:
    """Code each chunk (an empty chunk leaves its row idle); return the coded bytes and the
    ideal code length, sum of -log2 p over the coded tokens, in bits."""
    if predictor.exact:
        coded = [_encode_forced(predictor, c, roles, progress) if len(c) else (b"", 0.0) for c in chunks]
        return [payload for payload, _ in coded], sum(bits for _, bits in coded)
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
    return [enc.get_compressed().astype("<u4").tobytes() for enc in encoders], bits


def decode_batch(
    predictor: Predictor,
    payloads: list[bytes],
    lengths: list[int],
    roles: TokenRoles,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Decode `lengths[i]` tokens from each payload (length 0 leaves the row idle)."""
    decoders = []
    for payload in payloads:
        if len(payload) % 4:
            raise CorruptArchiveError("coded chunk length is not a multiple of 4 bytes")
        decoders.append(constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32)))
    tokens = [np.zeros(n, dtype=np.int64) for n in lengths]

    def code_step(t: int, active: np.ndarray, probs: np.ndarray) -> np.ndarray:
        for r in active:
            try:
                tokens[r][t] = decoders[r].decode(CODER_MODEL, probs[r : r + 1])[0]
            except (ValueError, RuntimeError, AssertionError) as e:
                raise CorruptArchiveError(f"coded chunk cannot be decoded: {e}") from e
        return np.array([tokens[r][t] for r in active], dtype=np.int64)

    _lockstep(predictor, _row_lengths(predictor, list(lengths)), roles, code_step, progress)
    return tokens
