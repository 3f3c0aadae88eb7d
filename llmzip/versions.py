"""Every version an archive records, in one place, and whether this llmzip decodes an archive.

An archive names what computed its probabilities: the exact forward (or a float one), the side
models' version, the learning rule's version, and the critical header extensions it uses (the
container format's own version is container.FORMAT_VERSION). Each is bumped whenever a number it
computes changes. Archives of older versions decode while this llmzip still computes them; those
it no longer computes are refused with one line naming the llmzip that decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import container
from .container import EXACT, PRECISIONS, Header
from .errors import CorruptArchiveError, UnsupportedVersionError


@dataclass(frozen=True)
class Forward:
    """An exact forward this llmzip computes: what changed from one to the next."""

    architecture: str  # exact/architectures.py's name: "llama" or "gemma3"
    key_levels: int | None  # the cached keys' integer levels; None: the architecture's own (Gemma 3: by head size)
    pins_sinks: bool  # the sinks are pinned before the window, so sequences may run past the model's context


FORWARDS = {
    "llmzip-exact-llama-2": Forward("llama", 511, pins_sinks=False),  # 10-bit keys (int16 in the cache)
    "llmzip-exact-llama-3": Forward(
        "llama", 127, pins_sinks=False
    ),  # 8-bit keys: +0.03% bits on enwik5, a third less to stream
    "llmzip-exact-llama-4": Forward("llama", 127, pins_sinks=True),
    "llmzip-exact-gemma3-2": Forward("gemma3", None, pins_sinks=False),
    "llmzip-exact-gemma3-3": Forward("gemma3", None, pins_sinks=True),
}
NEWEST = {"llama": "llmzip-exact-llama-4", "gemma3": "llmzip-exact-gemma3-3"}  # what encoders write
# Forwards no longer computed, and the llmzip that decodes them: their square root was torch's,
# which differs between CPUs (exact/arithmetic.sqrt), so only on the kind of CPU that made the archive.
RETIRED_FORWARDS = {
    "llmzip-exact-llama-1": "llmzip 0.4 (on the kind of CPU that made it)",
    "llmzip-exact-gemma3-1": "llmzip 0.4 (on the kind of CPU that made it)",
}

SIDE_MODELS = 4  # side/: the adaptive bias, token n-grams, match model and adaptive map, and their constants
SIDE_MODELS_READ = (3, 4)  # version 3: without token n-grams
NGRAMS_FROM = 4  # the first side models version that mixes token n-grams in
RETIRED_SIDE_MODELS = {1: "llmzip 0.4", 2: "llmzip 0.4"}  # no adaptive bias (version 1: one map for all batches)

LEARNING = 2  # exact/learning.py: the weights' update as they code

# Critical extensions this llmzip understands (tags below container.FIRST_OPTIONAL_EXTENSION that
# are not listed here make an archive undecodable; optional ones may be skipped).
UNDERSTOOD_EXTENSIONS = frozenset(
    {
        container.STEERING_EXTENSION,
        container.WINDOW_EXTENSION,
        container.SIDE_EXTENSION,
        container.LEARNING_EXTENSION,
    }
)


def forwards_of(architecture: str) -> tuple[str, ...]:
    """The exact forwards this llmzip computes for `architecture`, oldest first."""
    return tuple(name for name, forward in FORWARDS.items() if forward.architecture == architecture)


def pins_sinks(forward: str, window: int | None) -> bool:
    """Whether `forward` with `window` keeps every query within the model's context of its keys
    however long the chunk (exact/kvcache.py)."""
    return window is not None and forward in FORWARDS and FORWARDS[forward].pins_sinks


def check_decodable(header: Header, architecture: str | None, learns: bool) -> None:
    """Refuse, in one line, an archive whose computation this llmzip cannot reproduce with a
    model of exact `architecture` (None: a float forward only) that can learn or not (`learns`).
    The header is the archive's model's (fingerprints agree), so what that model cannot have
    coded is damage."""
    if header.precision not in PRECISIONS:
        raise UnsupportedVersionError(f"archive uses precision {header.precision!r}, unknown to this llmzip")
    if header.precision == EXACT and architecture is None:
        raise CorruptArchiveError("invalid header: exact precision for a model without an exact predictor")
    if header.precision == EXACT:
        computed, ours = forwards_of(architecture), NEWEST[architecture]
    else:  # other transformers versions may still give the same floats: the CRCs will tell
        computed, ours = (header.step,) if header.step.startswith("transformers-") else (), "transformers-*"
    if header.step not in computed:
        reader = f", which {RETIRED_FORWARDS[header.step]} decodes" if header.step in RETIRED_FORWARDS else ""
        raise UnsupportedVersionError(
            f"archive was coded with forward {header.step!r}{reader}; this llmzip runs {ours!r}"
        )
    if critical := [
        t for t in header.extensions if t < container.FIRST_OPTIONAL_EXTENSION and t not in UNDERSTOOD_EXTENSIONS
    ]:
        raise UnsupportedVersionError(f"archive uses extension {critical[0]}, unknown to this llmzip")
    if header.side_models and header.machine_bound:  # no encoder writes them: float rows differ
        raise CorruptArchiveError("invalid header: side models on a machine-bound archive")
    if header.side_models and (version := header.side_models_version) not in SIDE_MODELS_READ:
        why = (
            f"which {RETIRED_SIDE_MODELS[version]} decodes"
            if version in RETIRED_SIDE_MODELS
            else "unknown to this llmzip"
        )
        raise UnsupportedVersionError(f"archive uses side models version {version}, {why}")
    if (learned := header.learning_version) and learned != LEARNING:
        raise UnsupportedVersionError(f"archive's weights learned by version {learned}, unknown to this llmzip")
    if header.learning_version and not learns:
        raise CorruptArchiveError("invalid header: learning with a model that cannot learn")
