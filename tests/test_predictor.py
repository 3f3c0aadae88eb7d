"""The two predictors: the exact Llama and Gemma 3 (any rows, threads, teacher forcing or KV
steps give the same bits) and the Hugging Face float forward (machine-bound)."""

import itertools

import numpy as np
import pytest
import torch
from conftest import prepared

from llmzip import (
    Compressor,
    CorruptArchiveError,
    DecodeMismatchError,
    LlmzipError,
    UnsupportedVersionError,
    container,
    models,
    versions,
)
from llmzip.container import MIN_ROWS
from llmzip.exact import arithmetic, gemma3, kvcache, llama
from llmzip.exact.architectures import exact_architecture
from llmzip.exact.gemma3 import Gemma3Config
from llmzip.exact.llama import LlamaConfig
from llmzip.float_predictor import FloatPredictor
from llmzip.levels import SINK_TOKENS
from llmzip.predictor import ExactPredictor, forward_name

TEXT = b"the rain and the sun in the morning, \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 and the " * 3


@pytest.fixture(scope="module", params=["tiny", "tiny_gemma3"])
def exact_pair(request):
    """A tiny model of each exact architecture and its prepared exact model."""
    loaded = request.getfixturevalue(request.param)
    return loaded, prepared(loaded)


def test_exact_models_compute_the_hugging_face_model(exact_pair):
    """Quantized, rotated and in integers, but the same function: log-probabilities within 0.03
    nats of the float32 Hugging Face forward (their spread here: 0.17 for the Llama, 0.27 for
    the Gemma, which misses by 0.05 without its query norm gains and by 0.4 without its window)."""
    loaded, model = exact_pair
    ids = torch.from_numpy(loaded.tokenizer.encode(TEXT)[:40].astype(np.int64)).view(1, -1)
    with torch.inference_mode():
        reference = torch.log_softmax(loaded.model(input_ids=ids).logits.float(), -1)
    logits = model.forward(model.embed[ids], 0, model.new_cache(1, 40))
    assert (torch.log_softmax(logits.double(), -1) - reference).abs().max() < 0.03


def test_configs_only_claim_what_they_compute(tiny, tiny_gemma3, tiny_hf):
    assert LlamaConfig.of(tiny.model) is not None and forward_name(tiny.architecture, "exact") == llama.NAME
    assert Gemma3Config.of(tiny_gemma3.model) is not None
    assert forward_name(tiny_gemma3.architecture, "exact") == gemma3.NAME
    assert LlamaConfig.of(tiny_gemma3.model) is None and Gemma3Config.of(tiny.model) is None
    assert exact_architecture(tiny_hf.model) is None  # soft-capped attention
    assert forward_name(tiny_hf.architecture, "fp32").startswith("transformers-")
    biased = type(tiny.model)(type(tiny.model.config)(**(tiny.model.config.to_dict() | {"attention_bias": True})))
    assert LlamaConfig.of(biased) is None


def _stepped(predictor, rows, chunk, row, start_id):
    """Weights for `chunk` in row `row` of `rows`, the other rows fed other tokens."""
    predictor.start(rows, len(chunk))
    rng = np.random.default_rng(rows)
    inputs = np.concatenate([[start_id], chunk[:-1]])
    out = []
    for token in inputs:
        ids = rng.integers(0, predictor.vocab, rows)
        ids[row] = token
        out.append(predictor.step(ids)[row].copy())
    return np.stack(out)


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_weights_do_not_depend_on_forcing_rows_or_threads(exact_pair, threads):
    """Teacher forcing one chunk = KV steps of it in row 0 of 1, row 2 of 3, row 6 of 7, with a
    steering prefix of vectors, at 1 and 2 threads: bit for bit (the chunk is longer than the
    Gemma's sliding window)."""
    loaded, model = exact_pair
    tokenizer = loaded.tokenizer
    chunk = tokenizer.encode(TEXT)[:50]
    prefix = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32))
    predictor = ExactPredictor(model, tokenizer.alphabet_size, prefix)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor.start(1, len(chunk))
        inputs = np.concatenate([[tokenizer.roles.start_id], chunk[:-1]])
        forced = np.concatenate([w[0].copy() for w in predictor.forced(inputs[None])])  # each valid until the next
        for rows, row in [(1, 0), (3, 2), (7, 6)]:
            assert np.array_equal(_stepped(predictor, rows, chunk, row, tokenizer.roles.start_id), forced)
    finally:
        torch.set_num_threads(old)


def test_each_architecture_computes_each_of_its_forwards_forced_and_stepped(exact_pair):
    """The newest forward pins the sinks before the window; older archives' forwards (the Llama's
    3 with 8-bit keys and 2 with 10-bit keys, the Gemma's 2) do not. Each gives the same bits
    teacher-forced and stepped, from a cache of its own key width, and they differ (with a
    window shorter than the chunk, and for the Gemma as long as its local layers' window, so
    that those attend sinks too)."""
    loaded, model = exact_pair
    chunk, start_id = loaded.tokenizer.encode(TEXT)[:50], loaded.tokenizer.roles.start_id
    inputs = np.concatenate([[start_id], chunk[:-1]])
    window = 16 if model.NAME == gemma3.NAME else 20
    forced = []
    for forward in model.FORWARDS:
        predictor = ExactPredictor(model, loaded.tokenizer.alphabet_size, window=window, forward=forward)
        predictor.start(1, len(chunk))
        forced.append(np.concatenate([w[0].copy() for w in predictor.forced(inputs[None])]))
        assert predictor.cache.keys.dtype == kvcache.key_dtype(model.key_levels(model.config, forward))
        assert predictor.cache.pin_sinks == versions.FORWARDS[forward].pins_sinks
        assert np.array_equal(_stepped(predictor, 3, chunk, 2, start_id), forced[-1])
    assert model.FORWARDS[-1] == model.NAME and [versions.FORWARDS[f].pins_sinks for f in model.FORWARDS][-1:] == [True]
    assert not any(np.array_equal(a, b) for a, b in itertools.combinations(forced, 2))
    # before a query is past the window and sinks pinning changes nothing
    unpinned = window + SINK_TOKENS
    assert np.array_equal(forced[-1][:unpinned], forced[-2][:unpinned])
    assert not np.array_equal(forced[-1][unpinned:], forced[-2][unpinned:])


def test_a_window_gives_the_same_bits_forced_stepped_and_slid(exact_pair, monkeypatch):
    """With a window (and attention sinks), a chunk longer than the cache holds: teacher forcing
    = KV steps in row 2 of 3, both sliding the cache several times, = a cache that holds every
    position and never slides; and the window does change the numbers."""
    loaded, model = exact_pair
    tokenizer = loaded.tokenizer
    chunk = tokenizer.encode(TEXT * 6)[:700]
    inputs = np.concatenate([[tokenizer.roles.start_id], chunk[:-1]])
    prefix = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32))

    def forced(window):
        predictor = ExactPredictor(model, tokenizer.alphabet_size, prefix, window)
        predictor.start(1, len(chunk))
        return np.concatenate([w[0].copy() for w in predictor.forced(inputs[None])]), predictor

    windowed, predictor = forced(40)
    assert predictor.cache.capacity < len(chunk) and predictor.cache.dropped > 0
    assert np.array_equal(_stepped(predictor, 3, chunk, 2, tokenizer.roles.start_id), windowed)
    assert not np.array_equal(forced(None)[0], windowed)
    monkeypatch.setattr(kvcache, "SLACK", 10_000)
    held, predictor = forced(40)
    assert predictor.cache.dropped == 0 and np.array_equal(held, windowed)


def test_drafted_steps_give_the_forced_bits(exact_pair):
    """A decoder scoring its input and drafted tokens in one call, keeping the positions up to a
    wrong draft and scoring the rest again in the next (their cache entries overwritten), gets
    each kept position the bits teacher forcing gives, through a window that slides."""
    loaded, model = exact_pair
    tokenizer = loaded.tokenizer
    chunk = tokenizer.encode(TEXT * 12)[:700]
    inputs = np.concatenate([[tokenizer.roles.start_id], chunk[:-1]])
    predictor = ExactPredictor(model, tokenizer.alphabet_size, window=40)
    predictor.start(1, len(chunk))
    forced = np.concatenate([w[0].copy() for w in predictor.forced(inputs[None])])
    predictor.start(2, len(chunk))  # row 1 reads other tokens
    rng, kept, t = np.random.default_rng(0), [], 0
    while t < len(inputs):
        width = min(int(rng.integers(1, predictor.drafts(1) + 2)), len(inputs) - t)
        right = int(rng.integers(1, width + 1))  # positions whose inputs are right; the drafts after are wrong
        ids = rng.integers(0, predictor.vocab, (2, width))
        ids[0, :right] = inputs[t : t + right]
        ids[0, right:] = (inputs[t + right : t + width] + 1) % predictor.vocab
        kept.extend(predictor.score(ids)[0, :right].copy())
        predictor.advance(right)
        t += right
    assert predictor.cache.dropped > 0 and predictor.drafts(1) == 4
    assert np.array_equal(np.stack(kept), forced)


@pytest.mark.parametrize("window", [None, 12])
def test_whole_step_kernel_gives_the_block_loops_bits(exact_tiny, monkeypatch, window):
    """csrc/llama_forward.cpp against llama.py's loop over blocks (the definition): 3 rows, 1 to 5
    positions a call, past the window with the sinks pinned and the cache slid: the same logits
    and the same cache, bit for bit."""
    kernels = arithmetic.kernels()
    if kernels is None:
        pytest.skip("no kernels here")
    calls = []
    monkeypatch.setattr(kernels, "llama_forward", lambda *a, f=kernels.llama_forward: calls.append(1) or f(*a))
    ids = torch.randint(0, exact_tiny.config.vocab, (3, 600), generator=torch.Generator().manual_seed(1))
    runs = []
    for whole in (True, False):
        monkeypatch.setattr(llama.ExactLlama, "whole_steps", whole)
        cache = exact_tiny.new_cache(3, 600, window, SINK_TOKENS if window else 0)
        logits, start = [], 0
        for length in itertools.cycle(range(1, 6)):
            if start + length > ids.shape[1]:
                break
            logits.append(exact_tiny.forward(exact_tiny.embed[ids[:, start : start + length]], start, cache))
            start += length
        runs.append((torch.cat(logits, 1), [cache.keys, cache.key_scales, cache.values, cache.value_scales]))
    assert len(calls) == len(logits)  # every call of the first run, none of the second
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert window is None or cache.dropped > 0


def test_preallocated_cache_gives_the_stock_caches_floats(tiny):
    ids = tiny.tokenizer.encode(TEXT)
    runs = []
    for preallocate in (True, False):
        predictor = FloatPredictor(tiny.model, 4, tiny.tokenizer.alphabet_size, "fp32")
        predictor.preallocate = preallocate
        predictor.start(4, len(ids))
        runs.append([predictor.step(np.full(4, i)).copy() for i in ids])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize(
    ("model", "precision"),
    [
        ("tiny", "exact"),
        ("tiny_gemma3", "exact"),
        ("tiny", "fp32"),
        ("tiny", "bf16"),
        ("tiny_hf", "fp32"),
        ("tiny_hf", "bf16"),
        ("tiny_hf", "int8"),
    ],
)
def test_round_trip_each_forward_and_precision(request, model, precision):
    loaded = request.getfixturevalue(model)
    compressor = Compressor(loaded, chunk_size=48, batch_size=3, threads=1, precision=precision)
    archive = compressor.compress(TEXT)
    header, _ = container.unpack(archive)
    assert (header.precision, header.step) == (precision, forward_name(loaded.architecture, precision))
    assert header.machine_bound == (precision != "exact")
    assert compressor.stats.raw_chunks == 0
    assert compressor.decompress(archive) == TEXT


def test_a_model_without_exact_predictor_is_refused_exact(tiny_hf):
    with pytest.raises(LlmzipError, match="no exact predictor"):
        Compressor(tiny_hf, precision="exact")


def test_precision_changes_the_archive(tiny):
    archives = {p: Compressor(tiny, chunk_size=48, precision=p).compress(TEXT) for p in ("exact", "fp32")}
    assert container.unpack(archives["exact"])[1] != container.unpack(archives["fp32"])[1]


@pytest.mark.parametrize(
    "field, value, names",
    [
        ("step", "llmzip-exact-llama-0", ""),
        ("step", "llmzip-exact-llama-1", "llmzip 0.4 .on the kind of CPU that made it"),
        ("precision", "fp8", ""),
    ],
)
def test_decoder_refuses_a_forward_it_does_not_run(compressor, field, value, names):
    """Version 1 of the exact forwards took torch's square root: the message names the llmzip
    that decodes them."""
    header, payloads = container.unpack(compressor.compress(TEXT))
    setattr(header, field, value)
    with pytest.raises(UnsupportedVersionError, match=f"{value}.*{names}"):
        compressor.decompress(container.pack(header, payloads))


@pytest.mark.parametrize(
    ("precision", "cpu", "expected"),
    [
        ("exact", "NEON", "damaged|cannot be decoded"),
        ("fp32", None, "damaged"),
        ("fp32", "NEON", "NEON.*probabilities differ"),
    ],
)
def test_decoder_with_other_floats_names_the_cause(tiny, monkeypatch, precision, cpu, expected):
    """Probabilities that differ in the 20th bit fail the chunk CRC or the range decoder, never
    pass silently. For an exact archive the runtime cannot be the cause: the archive is damaged;
    for a float one a differing CPU is named."""
    compressor = Compressor(tiny, chunk_size=64, batch_size=4, threads=1, precision=precision)
    header, payloads = container.unpack(compressor.compress(TEXT))
    header.cpu_capability = cpu or header.cpu_capability
    archive = container.pack(header, payloads)
    kind, method = (ExactPredictor, "score") if precision == "exact" else (FloatPredictor, "step")  # the decoder's
    computed = getattr(kind, method)

    def perturbed(self, ids):
        probs = computed(self, ids).copy()
        probs[..., ::2] *= 1 + 2**-20
        return probs

    monkeypatch.setattr(kind, method, perturbed)
    with pytest.raises((DecodeMismatchError, CorruptArchiveError), match=expected):
        compressor.decompress(archive)


def test_a_cache_larger_than_memory_is_refused_before_allocating(tiny, exact_tiny):
    for predictor in (
        FloatPredictor(tiny.model, MIN_ROWS, tiny.tokenizer.alphabet_size, "fp32"),
        ExactPredictor(exact_tiny, tiny.tokenizer.alphabet_size),
    ):
        with pytest.raises(LlmzipError, match="GiB of KV cache"):
            predictor.start(MIN_ROWS, 10**12)


@pytest.mark.parametrize("model", ["tiny", "tiny_gemma3"])
def test_prepared_weights_are_cached_and_a_damaged_copy_is_prepared_again(request, model, monkeypatch, tmp_path):
    """The prepared integers of a built-in model are kept on disk with a digest; a copy that
    fails it is never used."""
    tiny = request.getfixturevalue(model)
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(models.ALIASES, tiny.name, None)  # cached like a built-in alias
    ids = torch.from_numpy(tiny.tokenizer.encode(TEXT)[:30].astype(np.int64))[None]

    monkeypatch.setattr(tiny, "exact_models", {})  # the process's copies: each call below reads the disk

    def logits(model):
        return model.forward(model.embed[ids], 0, model.new_cache(1, 30))

    def from_disk():
        tiny.exact_models.clear()
        model = models.exact_model(tiny, torch.device("cpu"))
        assert models.exact_model(tiny, torch.device("cpu")) is model  # kept for the process
        return model

    reference = logits(from_disk())
    (saved,) = (tmp_path / "prepared").iterdir()
    assert torch.equal(logits(from_disk()), reference)
    damaged = bytearray(saved.read_bytes())
    damaged[len(damaged) // 2] ^= 1  # inside the tensors
    saved.write_bytes(bytes(damaged))
    assert torch.equal(logits(from_disk()), reference)
    assert saved.read_bytes() != bytes(damaged)  # prepared again and saved over the damaged copy
