"""`--model auto`: the probe's pieces, the rule that weighs bits against a slower model, the choice."""

import io

import pytest

import llmzip
from llmzip import model_choice
from llmzip.model_choice import PROBE_PIECE_BYTES, PROBE_PIECES, ModelChoice, choose, pick, probe_pieces


def test_probe_pieces_are_spread_start_on_characters_and_leave_the_stream_at_its_start():
    data = ("é" * 3000).encode()  # two bytes a character: every other byte continues one
    stream = io.BytesIO(data)
    pieces = probe_pieces(stream, len(data))
    assert len(pieces) == PROBE_PIECES and stream.tell() == 0
    assert all(len(p) == PROBE_PIECE_BYTES and p[0] & 0xC0 != 0x80 for p in pieces)
    assert all(p.decode() for p in pieces)
    short = b"x" * (PROBE_PIECES * PROBE_PIECE_BYTES - 1)
    assert probe_pieces(io.BytesIO(short), len(short)) == []  # cheaper to code than to probe


@pytest.mark.parametrize(
    ("bits", "gain", "chosen"),
    [
        ({"fast": 100, "slow": 81}, 20, "fast"),  # 19% fewer bits: not enough at a gain of 20%
        ({"fast": 100, "slow": 80}, 20, "slow"),
        ({"fast": 100, "slow": 99}, 0, "slow"),  # --best: whichever codes smaller
        ({"fast": 100, "slow": 100}, 0, "fast"),
        ({"fast": 90, "slow": 100}, 20, "fast"),
        ({"a": 100, "b": 85, "c": 79}, 20, "b"),  # the first that no later one beats by the gain
        ({"a": 100, "b": 95, "c": 80}, 10, "c"),
    ],
)
def test_a_slower_model_is_taken_only_for_the_levels_gain(bits, gain, chosen):
    assert pick(bits, gain) == chosen


def test_choose_probes_each_candidate_and_records_why(tiny_dir, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setattr(model_choice, "CANDIDATES", (tiny_dir, tiny_gemma3_dir))
    data = bytes(range(32, 127)) * 40
    loaded = {}
    model, choice = choose(probe_pieces(io.BytesIO(data), len(data)), 9, "cpu", loaded)
    assert set(loaded) == {tiny_dir, tiny_gemma3_dir} and model is loaded[choice.chosen]
    assert choice.chosen == pick(choice.probe_bits, 0) and choice.probe_bytes == PROBE_PIECES * PROBE_PIECE_BYTES
    assert all(bits > 0 for bits in choice.probe_bits.values())
    assert ModelChoice.from_bytes(choice.chosen, choice.to_bytes()) == choice
    again, _ = choose([], 6, "cpu", loaded)  # nothing to probe: the fastest, already loaded
    assert again is loaded[tiny_dir]


def test_the_api_compresses_with_the_probes_choice(tiny_dir, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setattr(model_choice, "CANDIDATES", (tiny_dir, tiny_gemma3_dir))
    monkeypatch.setattr(model_choice, "pick", lambda bits, gain: tiny_gemma3_dir)
    data = b"the probe reads four pieces of this text " * 60
    archive = llmzip.compress(data, level=1)  # model: auto
    assert llmzip.decompress(archive) == data  # the archive names its model
    assert archive.count(tiny_gemma3_dir.encode()) == 2 and archive.count(tiny_dir.encode()) == 1  # name + record


def test_learning_asked_for_leaves_only_models_that_learn(tiny_dir, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setattr(model_choice, "CANDIDATES", (tiny_gemma3_dir, tiny_dir))
    data = bytes(range(32, 127)) * 40
    model, choice = choose(probe_pieces(io.BytesIO(data), len(data)), 9, "cpu", learn=True)
    assert model.name == tiny_dir and choice is None  # Gemma 3 does not learn: nothing left to weigh


def test_a_slower_model_out_of_reach_leaves_the_first(tiny_dir, monkeypatch, caplog):
    monkeypatch.setattr(model_choice, "CANDIDATES", (tiny_dir, "/no/such/model"))
    data = bytes(range(32, 127)) * 40
    model, choice = choose(probe_pieces(io.BytesIO(data), len(data)), 6, "cpu")
    assert model.name == tiny_dir and choice is None
    assert "--model auto leaves /no/such/model out" in caplog.text
