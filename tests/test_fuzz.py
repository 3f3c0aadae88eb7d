"""Fuzzing the container and decoder (short run; benchmarks/fuzz_archives.py runs thousands of cases)."""

from __future__ import annotations

import pytest
from fuzz.mutations import VIA, Layout, decoder, mutants, verdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DATA = b"the rain and the sun\r\n" * 8 + b"\xff\x04 raw bytes " + "écrit 雨".encode() * 3


@pytest.fixture(scope="module")
def layout(compressor) -> Layout:
    return Layout.of(compressor.compress(DATA))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutant_decodes_exactly_or_raises_an_llmzip_error(compressor, layout, data) -> None:
    name, mutant = data.draw(mutants(layout))
    via = data.draw(st.sampled_from(VIA))
    outcome = verdict(decoder(compressor, via), DATA, mutant)
    assert outcome in ("exact", "llmzip error"), f"{name} via {via}: {outcome}"
