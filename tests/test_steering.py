"""Steering prefixes and the hyperprior that codes trained vectors into the header."""

import numpy as np
import pytest

from llmzip import Compressor, CorruptArchiveError, InvalidOptionError, container
from llmzip.steering import hyperprior
from llmzip.steering.soft_prompt import Steering, TrainOptions
from llmzip.steering.training import train, training_batch

TEXT = ("the rain and the sun in the morning, Привет мир. " * 40).encode()
QUICK = TrainOptions(steps=8, lr=0.05, chunks=4, tokens=32)


def steered(model, steer: str, prior: str = "gaussian", bins: int = 64) -> Compressor:
    return Compressor(model, chunk_size=64, batch_size=4, threads=1, steer=steer, prior=prior, prior_bins=bins,
                      training=QUICK)  # fmt: skip


@pytest.mark.parametrize("steer", ["none", "text:the and Привет", "random:3", "trained:2", "auto"])
@pytest.mark.parametrize("model", ["tiny", "tiny_hf"])
def test_every_variant_round_trips(request, model, steer):
    compressor = steered(request.getfixturevalue(model), steer)
    archive = compressor.compress(TEXT)
    assert compressor.decompress(archive) == TEXT
    header, _ = container.unpack(archive)
    payload = header.extensions.get(container.STEERING_EXTENSION, b"")
    assert len(payload) == compressor.stats.steering_bytes  # the vector's bytes are in the archive


@pytest.mark.parametrize("prior", hyperprior.PRIORS)
def test_every_prior_round_trips_a_trained_vector(tiny, prior):
    compressor = steered(tiny, "trained:2", prior)
    archive = compressor.compress(TEXT)
    assert compressor.decompress(archive) == TEXT
    steer = Steering.from_bytes(container.unpack(archive)[0].extensions[container.STEERING_EXTENSION])
    assert steer.kind == "trained" and steer.count == 2
    assert hyperprior.PRIORS[steer.coded.data[0]] == prior


def test_a_prefix_changes_the_coded_bits(tiny):
    """The decoder must see the prefix: otherwise steering would silently be ignored."""
    plain = steered(tiny, "none").compress(TEXT)
    for steer in ("text:the", "random:1"):
        assert container.unpack(steered(tiny, steer).compress(TEXT))[1] != container.unpack(plain)[1]


@pytest.mark.parametrize("prior", hyperprior.PRIORS)
def test_hyperprior_codes_what_it_reports(prior):
    values = np.random.default_rng(0).normal(0, 0.02, 500).astype(np.float32)
    coarse, fine = hyperprior.encode(values, prior, 8), hyperprior.encode(values, prior, 256)
    for coded in (coarse, fine):
        assert np.array_equal(hyperprior.decode(coded.data), coded.values)  # what the decoder will hold
        assert coded.values.dtype == np.float32 and coded.values.shape == values.shape
        assert coded.mse == pytest.approx(np.mean((values - coded.values) ** 2))
    assert fine.mse < coarse.mse / 2 and fine.bits > coarse.bits  # empirical: clipped outliers keep some error


def test_gaussian_prior_costs_about_the_entropy():
    values = np.random.default_rng(1).normal(0, 1, 4000).astype(np.float32)
    coded = hyperprior.encode(values, "gaussian", 64)
    assert coded.bits < 1.05 * coded.entropy_bits + 200  # matched prior: near the empirical entropy


def test_constant_vector():
    for prior in hyperprior.PRIORS:
        coded = hyperprior.encode(np.full(10, 0.5, np.float32), prior, 16)
        assert np.array_equal(coded.values, np.full(10, 0.5, np.float32))


def test_training_lowers_the_code_length(tiny):
    ids = tiny.tokenizer.encode(TEXT)
    chunks = [ids[i : i + 64] for i in range(0, len(ids), 64)]
    losses: list[float] = []
    flags = [p.requires_grad for p in tiny.model.parameters()]
    train(tiny.model, tiny.tokenizer, chunks, 2, TrainOptions(steps=30, lr=0.05, chunks=4, tokens=64), False,
          losses.append)  # fmt: skip
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.05
    assert [p.requires_grad for p in tiny.model.parameters()] == flags  # the shared model is left as it was


def test_training_batch_targets_skip_escapes(tiny):
    ids = tiny.tokenizer.encode(b"the \x04 and")  # 0x04 is not in the vocabulary: an escape
    inputs, targets = training_batch([ids], tiny.tokenizer, TrainOptions(tokens=64))
    assert inputs[0, 0] == tiny.tokenizer.roles.start_id
    assert (targets[0] == -100).sum() == (ids >= tiny.tokenizer.roles.model_vocab).sum() == 1


def test_auto_never_grows_the_archive(tiny, tiny_hf):
    for model in (tiny, tiny_hf):
        none = steered(model, "none").compress(TEXT)
        compressor = steered(model, "auto")
        auto = compressor.compress(TEXT)
        assert len(auto) <= len(none) and compressor.stats.unsteered_bytes == len(none)
        assert compressor.decompress(auto) == TEXT


def test_auto_drops_vectors_that_cost_more_than_they_save(tiny):
    compressor = steered(tiny, "auto:64")  # 64 vectors x 64 coordinates on 2 KB of text
    archive = compressor.compress(TEXT)
    assert compressor.stats.steering == "none" and len(archive) == compressor.stats.unsteered_bytes


def test_corrupt_steering_payload_is_an_error(compressor, tiny):
    archive = steered(tiny, "trained:1").compress(TEXT)
    header, payloads = container.unpack(archive)
    good = header.extensions[container.STEERING_EXTENSION]
    for bad in (good[:-3], good + b"\x00", b"\x09" + good[1:], good[:2] + b"\xff" * 8):
        header.extensions[container.STEERING_EXTENSION] = bad
        with pytest.raises(CorruptArchiveError):
            compressor.decompress(container.pack(header, payloads))


@pytest.mark.parametrize("spec", ["trained", "trained:0", "random:x", "text:", "bogus", "trained:999"])
def test_bad_steering_spec(tiny, spec):
    with pytest.raises(InvalidOptionError):
        steered(tiny, spec)


def test_bad_prior_options(tiny):
    with pytest.raises(InvalidOptionError):
        steered(tiny, "trained:1", prior="laplace")
    with pytest.raises(InvalidOptionError):
        steered(tiny, "trained:1", bins=1)


def test_clip_sets_the_bin_range():
    values = np.random.default_rng(2).normal(0, 1, 1000).astype(np.float32)
    full, clipped = hyperprior.encode(values, "gaussian", 32), hyperprior.encode(values, "gaussian", 32, clip=5)
    assert full.values.max() > clipped.values.max() > np.percentile(values, 90)
    assert full.values.min() < clipped.values.min() < np.percentile(values, 10)
    with pytest.raises(InvalidOptionError):
        hyperprior.encode(values, "gaussian", 32, clip=50)


def test_prefix_beyond_the_context_is_refused_before_training(tiny):
    compressor = Compressor(tiny, level=1, chunk_size=4090, steer="trained:8", training=QUICK)

    def fail(loss: float) -> None:
        raise AssertionError("trained before checking the context")

    with pytest.raises(InvalidOptionError, match="context"):
        compressor.compress(TEXT, on_train_step=fail)
