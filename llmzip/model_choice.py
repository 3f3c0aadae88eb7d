"""`--model auto`: the built-in model for a file, chosen from a probe of it. Each candidate codes
the same few pieces, spread over the input, cold and without side models; the fastest model
is kept unless a slower one codes the probe smaller by at least the level's `auto_gain`
(levels.py). The choice and the probe's figures travel in the archive's header for `info`;
decoding reads the model's name there, as for any archive.

Gemma 3 270M codes about half as many tokens a second as SmolLM2-135M, but far better where
SmolLM2 saw little of a language (docs/levels.md; the probe per corpus file and whole files with
the chosen model: docs/results.md). Light on purpose (the coder is imported by `choose` alone):
`info` reads the header's record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from . import container, notices
from .aliases import DEFAULT_MODEL
from .errors import CorruptArchiveError, ModelLoadError
from .levels import LEVELS

if TYPE_CHECKING:
    from .models import LoadedModel
    from .options import Options

AUTO = "auto"
CANDIDATES = (DEFAULT_MODEL, "gemma3-270m")  # built-in models, fastest first
PROBE_PIECES = 4  # spread over the input: a header in another language (Project Gutenberg's) does not decide
PROBE_PIECE_BYTES = 512


@dataclass(frozen=True)
class ModelChoice:
    """What `--model auto` chose and why: each candidate's probe size in bits."""

    chosen: str
    level: int
    probe_bytes: int
    probe_bits: dict[str, int]  # candidate -> bits of its probe's payloads

    def record(self) -> bytes | None:
        """The header's record: none where the fastest model was kept, so that its archive is
        byte for byte the one that model, named, makes."""
        return None if self.chosen == CANDIDATES[0] else self.to_bytes()

    def to_bytes(self) -> bytes:
        out = container.varint(self.level) + container.varint(self.probe_bytes)
        for name, bits in self.probe_bits.items():
            out += container.string_bytes(name) + container.varint(bits)
        return out

    @classmethod
    def from_bytes(cls, chosen: str, data: bytes) -> ModelChoice:
        reader = container.Reader(data)
        level, probe_bytes, bits = reader.varint(), reader.varint(), {}
        while not reader.at_end():
            name = reader.string()
            bits[name] = reader.varint()
        if not probe_bytes:
            raise CorruptArchiveError("invalid header: a model choice from a probe of 0 bytes")
        return cls(chosen, level, probe_bytes, bits)

    def describe(self) -> str:
        ranked = sorted(self.probe_bits.items(), key=lambda item: item[1])
        figures = ", ".join(f"{name} {bits / self.probe_bytes:.3f}" for name, bits in ranked)
        gain = LEVELS[self.level].auto_gain if self.level in LEVELS else None
        rule = "" if gain is None else f"; level {self.level} takes a slower model for {gain}% fewer bits"
        return f"chosen by --model auto: a probe of {self.probe_bytes} bytes coded in bits/byte {figures}{rule}"


def probe_pieces(stream: BinaryIO, size: int) -> list[bytes]:
    """PROBE_PIECES pieces of a seekable stream of `size` bytes, evenly spread, each starting on a
    UTF-8 character; none for an input shorter than the probe, which the fastest model codes
    (a probe would cost more than coding it); the stream is left at its start."""
    pieces = []
    for k in range(PROBE_PIECES if size >= PROBE_PIECES * PROBE_PIECE_BYTES else 0):
        stream.seek(size * k // PROBE_PIECES)
        piece = stream.read(PROBE_PIECE_BYTES + 3)
        start = next((i for i in range(4) if i == len(piece) or piece[i] & 0xC0 != 0x80), 0)
        pieces.append(piece[start : start + PROBE_PIECE_BYTES])
    stream.seek(0)
    return pieces


def choose(
    pieces: list[bytes],
    level: int,
    device: str = "auto",
    loaded: dict[str, LoadedModel] | None = None,
    learn: bool = False,
) -> tuple[LoadedModel, ModelChoice | None]:
    """The candidate to code an input with at `level`, from its probe `pieces` (the fastest,
    without a probe, where there are none), loaded; `loaded`: models loaded before, by name,
    where those loaded now are kept too. `learn`: only candidates whose weights can learn."""
    from .batches import BatchCoder, Plan
    from .exact.architectures import can_learn
    from .models import load_model
    from .predictor import forward_name

    loaded = {} if loaded is None else loaded
    for name in CANDIDATES if pieces else CANDIDATES[:1]:
        if name in loaded:
            continue
        try:
            loaded[name] = load_model(name)
        except ModelLoadError as e:  # a slower model out of reach (offline): the first still codes
            if name == CANDIDATES[0]:
                raise
            notices.warn(f"--model auto leaves {name} out: {e}")
    names = [name for name in CANDIDATES if name in loaded and (not learn or can_learn(loaded[name].architecture))]
    if not pieces or len(names) < 2:
        return loaded[names[0] if names else CANDIDATES[0]], None
    gain, bits = LEVELS[level].auto_gain, {}
    for name in names:
        model = loaded[name]
        batch = [model.tokenizer.encode(piece) for piece in pieces]
        forward = forward_name(model.architecture, container.EXACT)
        plan = Plan(container.EXACT, forward, len(batch), b"", None, 0, 0)
        coded = BatchCoder(model, device).encode(plan, batch)
        bits[name] = sum(8 * len(c if c is not None else p) for c, p in zip(coded.payloads, pieces, strict=True))
    chosen = pick(bits, gain)
    return loaded[chosen], ModelChoice(chosen, level, sum(map(len, pieces)), bits)


def choose_for(stream: BinaryIO, size: int, options: Options) -> tuple[LoadedModel, ModelChoice | None]:
    """`choose` for a seekable stream of `size` bytes about to be compressed with `options`."""
    return choose(probe_pieces(stream, size), options.level, options.device, learn=bool(options.learn))


def pick(bits: dict[str, int], gain: int) -> str:
    """The first (fastest) of the models `bits` holds, in order, that a later one does not beat
    by `gain` percent of its bits or more (in integers: no rounding decides)."""
    smallest = min(bits.values())
    return next(name for name, b in bits.items() if b == smallest or 100 * (b - smallest) < gain * b)
