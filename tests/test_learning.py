"""Dynamic evaluation in the exact model (learning.py): its gradients are the float model's, its
steps lower the code length, and every machine takes the same steps."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import byte_level_tokenizer, prepared, tiny_model

from llmzip import Compressor, InvalidOptionError, container, levels, versions
from llmzip.exact import arithmetic, learning
from llmzip.exact.llama import HEAD, Tape
from llmzip.levels import LEVELS, Level

SEGMENT = 24


def _segment(loaded, model, text: bytes = b"the rain and the sun in the rain on the sun at the inn " * 3):
    ids = torch.from_numpy(loaded.tokenizer.encode(text)[: SEGMENT + 1].astype(np.int64))[None]
    return ids[:, :-1], ids[:, 1:]


def _forward(model, inputs: torch.Tensor, tape: Tape | None = None) -> torch.Tensor:
    cache = model.new_cache(1, inputs.shape[1])
    return model.forward(model.embed[inputs], 0, cache, tape)


def _bits(model, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    weights = arithmetic.softmax_weights(_forward(model, inputs)[0]).double()
    q = weights[torch.arange(inputs.shape[1]), targets[0]] / weights.sum(-1)
    return float(-torch.log2(q).sum())


def _stream(model, learner: learning.Learner | None, ids: torch.Tensor, window: int, segment: int = 8) -> float:
    """Bits of ids[1:] coded as one sequence with a window and 4 sinks (pinned past the window, as
    level 9 codes), learning after each segment if `learner`."""
    cache = model.new_cache(1, ids.shape[1], window, 4)
    bits = 0.0
    for start in range(0, ids.shape[1] - 1, segment):
        end = min(start + segment, ids.shape[1] - 1)
        tape = Tape() if learner else None
        logits = model.forward(model.embed[ids[:, start:end]], start, cache, tape)
        weights = arithmetic.softmax_weights(logits[0]).double()
        targets = ids[:, start + 1 : end + 1]
        bits -= float(torch.log2(weights[torch.arange(end - start), targets[0]] / weights.sum(-1)).sum())
        if learner:
            learner.learn(tape, logits, targets)
    return bits


def test_gradients_are_the_float_models():
    """The integer backward pass, pulled back to the checkpoint's coordinates, points where float64
    autograd of the Hugging Face model points (the forward's rounding passed straight through)."""
    loaded = tiny_model(byte_level_tokenizer())
    model = prepared(loaded)
    inputs, targets = _segment(loaded, model)
    tape = Tape()
    logits = _forward(model, inputs, tape)
    maps = type(model).projection_maps(loaded.model, model.config)
    grads = learning.Learner(model, maps).gradients(tape, logits, targets)

    hf = loaded.model.double()
    embeddings = hf.model.embed_tokens(inputs).detach()  # the head's share of the tied weights only
    loss = torch.nn.functional.cross_entropy(hf(inputs_embeds=embeddings).logits[0], targets[0], reduction="sum")
    hf.zero_grad()
    loss.backward()
    w = {name: p.grad for name, p in hf.named_parameters()}
    expected = {HEAD: w["model.embed_tokens.weight"]}
    for i in range(model.config.layers):
        p = f"model.layers.{i}."
        expected[i, "qkv"] = torch.cat([w[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        expected[i, "out"] = w[p + "self_attn.o_proj.weight"]
        expected[i, "gate_up"] = torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
        expected[i, "down"] = w[p + "mlp.down_proj.weight"]
    assert grads.keys() == expected.keys()
    for key, grad in grads.items():
        pulled, reference = (grad.integers * grad.scale).flatten(), expected[key].flatten()
        cosine = float(pulled @ reference / (pulled.norm() * reference.norm()))
        assert cosine > 0.999, (key, cosine)


def test_top_blocks_learn_with_the_full_learners_gradients():
    """A learner of the head and the top blocks records only those blocks and takes their
    gradients bit for bit as the learner of every block does (the backward stops below them)."""
    loaded = tiny_model(byte_level_tokenizer())
    model = prepared(loaded)
    inputs, targets = _segment(loaded, model)
    maps = type(model).projection_maps(loaded.model, model.config)
    everything = learning.Learner(model, maps)
    tape = everything.tape()
    full = everything.gradients(tape, _forward(everything.model, inputs, tape), targets)
    layers = model.config.layers
    assert layers >= 2
    for blocks in (0, 1, layers):
        learner = learning.Learner(model, maps, blocks)
        tape = learner.tape()
        grads = learner.gradients(tape, _forward(learner.model, inputs, tape), targets)
        assert len(tape.blocks) == blocks
        assert set(grads) == {key for key in full if key == HEAD or key[0] >= layers - blocks}
        for key, grad in grads.items():
            assert torch.equal(grad.integers, full[key].integers) and torch.equal(grad.scale, full[key].scale), key


def test_logits_gradient_and_column_quantization_kernels_give_the_torch_codes_bits(monkeypatch):
    if arithmetic.kernels() is None:
        pytest.skip("no compiler here")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 1003, generator=generator) * 6
    targets = torch.randint(0, 1003, (40,), generator=generator)
    targets[[3, 17]] = -1  # rows past their end
    x = torch.randn(40, 1003, generator=generator, dtype=torch.float64) * torch.rand(40, 1, generator=generator)
    x[:, 5] = 0.0
    results = []
    for kernels in (arithmetic.kernels(), None):
        monkeypatch.setattr(arithmetic, "kernels", lambda k=kernels: k)
        results.append((learning.logits_gradient(logits, targets), *arithmetic.quantize(x, 2**20, dim=0)))
    for kernel, reference in zip(*results, strict=True):
        assert torch.equal(kernel, reference)
    gradient = results[1][0]
    assert (gradient[[3, 17]] == 0).all() and torch.allclose(gradient.sum(-1)[:3], torch.zeros(3, dtype=torch.float64))


def test_steps_lower_the_code_length_and_reset_undoes_them(monkeypatch):
    loaded = tiny_model(byte_level_tokenizer())
    model = prepared(loaded)
    inputs, targets = _segment(loaded, model)
    learner = learning.Learner(model, type(model).projection_maps(loaded.model, model.config))
    monkeypatch.setattr(learning, "RATE", 1e-3)  # the tiny model's weights are 100x SmolLM2's steps
    before = _bits(model, inputs, targets)
    model = learner.model  # the learner's copy: the prepared model stays as it was
    for _ in range(3):
        tape = Tape()
        learner.learn(tape, _forward(model, inputs, tape), targets)
    after = _bits(model, inputs, targets)
    assert after < 0.9 * before, (before, after)
    learner.reset()
    assert _bits(model, inputs, targets) == before


def test_learning_runs_past_the_window_with_pinned_sinks(monkeypatch):
    """Segments whose queries see sinks from before their window (and a cache that slides) learn
    too: the attention backward's sink queries and slots."""
    loaded = tiny_model(byte_level_tokenizer())
    model = prepared(loaded)
    ids = torch.from_numpy(loaded.tokenizer.encode(b"the rain and the sun in the inn at " * 12).astype(np.int64))[None]
    monkeypatch.setattr(learning, "RATE", 1e-3)
    learner = learning.Learner(model, type(model).projection_maps(loaded.model, model.config))
    assert ids.shape[1] > 3 * 16
    prepared_bits = _stream(model, None, ids, window=16)
    assert _stream(learner.model, learner, ids, window=16) < 0.9 * prepared_bits
    assert _stream(model, None, ids, window=16) == prepared_bits


def test_rms_step_kernel_gives_the_torch_codes_bits(monkeypatch):
    if arithmetic.kernels() is None:
        pytest.skip("no compiler here")
    generator = torch.Generator().manual_seed(0)
    integers = torch.randint(-(2**20), 2**20, (1000, 37), generator=generator, dtype=torch.float64)
    integers[0, :5] = 0.0
    grad = learning.WeightGradient(integers, 10.0 ** torch.randint(-18, -6, (1000, 1), generator=generator).double())
    results = []
    for kernels in (arithmetic.kernels(), None):
        monkeypatch.setattr(arithmetic, "kernels", lambda k=kernels: k)
        square, master = (
            torch.rand(1000, 37, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
            integers.cos(),
        )
        for decayed in (learning.DECAY, learning.DECAY**2):
            learning.rms_step(grad, square, master, decayed)
        results.append((square, master))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_softmax_backward_kernel_gives_the_torch_codes_bits(monkeypatch):
    """Attention's backward pass between its products (probabilities, their gradient, its
    quantization) in the kernels and in torch, with keys masked by a window and sinks."""
    if arithmetic.kernels() is None:
        pytest.skip("no compiler here")
    generator = torch.Generator().manual_seed(0)
    batch, keys, length, groups = 3, 70, 20, 2

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    def integers(*shape: int) -> torch.Tensor:
        return torch.randint(-(2**20), 2**20, shape, generator=generator, dtype=torch.float64)

    positions = torch.arange(keys - length, keys).repeat(groups)
    t = SimpleNamespace(
        key_scales=uniform(batch, 1, keys).float() * 1e-5,
        q_scale=uniform(batch, len(positions), 1).float(),
        value_scales=uniform(batch, 1, keys).float(),
        positions=positions,
        window=24,
        sinks=4,
    )
    scores, dp = integers(batch, len(positions), keys), integers(batch, len(positions), keys)
    d_scale, dp_mean = uniform(batch, len(positions), 1) * 1e-6, uniform(batch, len(positions), 1)
    results = []
    for kernels in (arithmetic.kernels(), None):
        monkeypatch.setattr(arithmetic, "kernels", lambda k=kernels: k)
        results.append(learning.softmax_backward(t, scores.clone(), dp.clone(), d_scale, dp_mean))
    p = results[1][0]
    assert (
        (p[0, 0, 4 : keys - length - 23] == 0).all()
        and (p[0, 0, :4] > 0).all()
        and (p[0, 0, keys - length + 1 :] == 0).all()
    )
    for kernel, reference in zip(*results, strict=True):
        assert torch.equal(kernel, reference)


def learning_digest() -> str:
    """A few learning steps on the tiny model, then the next logits and the learned weights, as a
    digest: tests/test_portability.py computes it under every kernel setting and thread count."""
    loaded = tiny_model(byte_level_tokenizer())
    model = prepared(loaded)
    inputs, targets = _segment(loaded, model)
    learner = learning.Learner(model, type(model).projection_maps(loaded.model, model.config))
    rate, learning.RATE = learning.RATE, 1e-3  # the tiny model's weights are 100x SmolLM2's steps
    try:
        model = learner.model
        digest = hashlib.sha256()
        for _ in range(3):
            tape = Tape()
            logits = _forward(model, inputs, tape)
            digest.update(logits.numpy().tobytes())
            learner.learn(tape, logits, targets)
        ids = torch.cat([inputs, targets[:, -1:]], 1).repeat(1, 3)
        digest.update(str(_stream(model, learner, ids, window=16)).encode())
    finally:
        learning.RATE = rate
    for name, tensor in sorted(model.state().items()):
        digest.update(name.encode() + tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_float64_hadamard_transposes_and_the_kernel_gives_the_torch_codes_bits(monkeypatch):
    """arithmetic.hadamard with transpose=True undoes it (H H^T = n I), on float64 grids as learning
    rotates weights, in the kernels and in torch alike."""
    x = torch.from_numpy(np.random.RandomState(0).randint(-(2**40), 2**40, (5, 1536)).astype(np.float64))
    results = []
    for kernels in (arithmetic.kernels(), None):
        monkeypatch.setattr(arithmetic, "kernels", lambda k=kernels: k)
        there = arithmetic.hadamard(x)
        assert torch.equal(arithmetic.hadamard(there, transpose=True), x * 1536)
        results.append(there)
    assert torch.equal(*results)


def test_learning_round_trips_and_codes_smaller(tiny, tiny_gemma3, monkeypatch):
    """The weights learn as they code (--learn, here at level 9): chunks of several lengths in one batch, a cache that
    slides, sinks pinned past the window; the decoder takes it all from the header, in any thread
    count; the model alone codes it smaller than without learning."""
    monkeypatch.setattr(learning, "SEGMENT", 8)
    monkeypatch.setattr(learning, "RATE", 1e-3)
    monkeypatch.setattr(levels, "STEP_ROWS", 2)
    data = b"the rain and the sun in the inn at the " * 12 + b"sun"
    sizes = {}
    monkeypatch.setitem(LEVELS, 9, Level(48, 16))
    for learns in (True, False):
        compressor = Compressor(tiny, level=9, learn=learns, side_models=learns)  # without: the model alone
        archive = compressor.compress(data)
        header = container.unpack(archive)[0]
        assert header.learning_version == (versions.LEARNING if learns else 0)
        assert len(header.chunks) >= 2 and len({c.tokens for c in header.chunks}) >= 2
        for threads in (1, 2):
            assert Compressor(tiny, level=1, threads=threads).decompress(archive) == data
        sizes[learns] = len(Compressor(tiny, level=9, learn=learns, side_models=False).compress(data))
    assert sizes[True] < sizes[False]
    with pytest.raises(InvalidOptionError, match="Llama"):
        Compressor(tiny_gemma3, learn=True)


def test_levels_learn_where_the_model_can(tiny, tiny_gemma3):
    """A level's learning (-9's) unless `learn` says; a model that cannot learn codes the level without."""
    for n, level in LEVELS.items():
        assert Compressor(tiny, level=n).learning == level.learn
        assert Compressor(tiny, level=n, learn=not level.learn).learning != level.learn
        assert not Compressor(tiny_gemma3, level=n).learning
        assert not Compressor(tiny, level=n, precision="fp32").learning
    assert any(level.learn for level in LEVELS.values())
