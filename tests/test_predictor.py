"""The two forward implementations: llmzip's Llama step and the Hugging Face forward."""

import numpy as np
import pytest
import torch

from llmzip import Compressor, DecodeMismatchError, LlmzipError, UnsupportedVersionError, container
from llmzip.llama import LlamaConfig, LlamaStep
from llmzip.predictor import MIN_ROWS, HFStep, Predictor, step_name

TEXT = b"the rain and the sun in the morning, \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 and the " * 3


def test_llama_step_computes_the_hugging_face_model(tiny):
    """Same log-probabilities as a teacher-forced Hugging Face forward, within float32 noise;
    bf16 within bf16 noise."""
    ids = torch.from_numpy(tiny.tokenizer.encode(TEXT)[:40].astype(np.int64)).view(1, -1).repeat(4, 1)
    ids[1:, 5:] = ids[0, :-5].flip(0)  # rows that differ
    with torch.inference_mode():
        reference = torch.log_softmax(tiny.model(input_ids=ids).logits.float(), -1)
    for precision, tolerance in [("fp32", 1e-4), ("bf16", 0.15)]:
        predictor = Predictor(tiny.model, 4, tiny.tokenizer.alphabet_size, precision)
        assert type(predictor.forward).__name__ == "LlamaStep"
        predictor.reset(ids.shape[1])
        stepped = torch.stack([torch.log_softmax(predictor.forward(ids[:, t]), -1) for t in range(ids.shape[1])], 1)
        assert (stepped - reference).abs().max() < tolerance


def test_llama_step_only_claims_plain_llamas(tiny, tiny_hf):
    assert LlamaConfig.of(tiny.model) is not None and step_name(tiny.model) == LlamaStep.NAME
    assert LlamaConfig.of(tiny_hf.model) is None and step_name(tiny_hf.model).startswith("transformers-")
    biased = type(tiny.model)(type(tiny.model.config)(**(tiny.model.config.to_dict() | {"attention_bias": True})))
    assert LlamaConfig.of(biased) is None


def test_preallocated_cache_gives_the_stock_caches_floats(tiny):
    ids = tiny.tokenizer.encode(TEXT)
    runs = []
    for preallocate in (True, False):
        step = HFStep(tiny.model, "fp32")
        step.preallocate = preallocate
        step.reset(len(ids))
        runs.append([step(torch.full((4,), int(i))) for i in ids])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("model", ["tiny", "tiny_hf"])
def test_round_trip_each_forward_and_precision(request, model, precision):
    loaded = request.getfixturevalue(model)
    compressor = Compressor(loaded, chunk_size=48, batch_size=3, threads=1, precision=precision)
    archive = compressor.compress(TEXT)
    header, _ = container.unpack(archive)
    assert (header.precision, header.step) == (precision, step_name(loaded.model))
    assert compressor.stats.raw_chunks == 0
    assert compressor.decompress(archive) == TEXT


def test_precision_changes_the_archive(tiny):
    archives = {p: Compressor(tiny, chunk_size=48, precision=p).compress(TEXT) for p in ("fp32", "bf16")}
    assert container.unpack(archives["fp32"])[1] != container.unpack(archives["bf16"])[1]


@pytest.mark.parametrize("field, value", [("step", "llmzip-llama-0"), ("precision", "fp8")])
def test_decoder_refuses_a_forward_it_does_not_run(compressor, field, value):
    header, payloads = container.unpack(compressor.compress(TEXT))
    setattr(header, field, value)
    with pytest.raises(UnsupportedVersionError, match=value):
        compressor.decompress(container.pack(header, payloads))


@pytest.mark.parametrize("cpu, expected", [(None, "damaged"), ("AVX2", "AVX2.*probabilities differ")])
def test_decoder_with_other_floats_names_the_runtime(compressor, monkeypatch, cpu, expected):
    """Probabilities that differ by one ulp (as on another CPU) fail the chunk CRC, never pass silently."""
    header, payloads = container.unpack(compressor.compress(TEXT))
    header.cpu_capability = cpu or header.cpu_capability
    archive = container.pack(header, payloads)
    step = Predictor.step
    monkeypatch.setattr(Predictor, "step", lambda self, ids: np.nextafter(step(self, ids), 1, dtype=np.float32))
    with pytest.raises(DecodeMismatchError, match=expected):
        compressor.decompress(archive)


def test_a_cache_larger_than_memory_is_refused_before_allocating(tiny):
    predictor = Predictor(tiny.model, MIN_ROWS, tiny.tokenizer.alphabet_size)
    with pytest.raises(LlmzipError, match="GiB of KV cache"):
        predictor.reset(10**12)
