"""Hyperprior: a real vector quantized, then entropy coded under a prior whose parameters travel
with it, so that its exact cost in bits is part of the archive.

    values --quantize--> indices into a codebook --range coder under the prior--> bytes

Three priors, each with its own codebook:
- `gaussian`: `bins` uniform bins on [min, max]; indices coded under a Gaussian fitted to the
  values (mean and std stored), discretised over the bins.
- `empirical`: uniform bins on the 1st-99th percentile range (outliers clip to the edge bins);
  indices coded under their own histogram (counts stored).
- `lloyd-max`: the Lloyd-Max quantizer, i.e. 1-D k-means with `bins` centroids (stored);
  indices coded under their histogram.

`encode` returns the bytes, `decode` the dequantized float32 values; an encoder that will use
the values must take them from `decode(encode(...))`, so both sides hold the same floats.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import constriction
import numpy as np

from ..container import Reader, varint
from ..errors import CorruptArchiveError, InvalidOptionError

PRIORS = ("gaussian", "empirical", "lloyd-max")
DEFAULT_BINS = 64
MAX_BINS = 1 << 16
MAX_VALUES = 1 << 24
# Default range of the uniform bins, as the percentile cut from each end (outliers clip to the
# edge bins): the Gaussian prior's bins span [min, max], the empirical prior's the 1st-99th percentiles.
DEFAULT_CLIP = {"gaussian": 0.0, "empirical": 1.0}


@dataclass(frozen=True)
class CodedVector:
    """A vector as coded: the bytes and what they cost (for `info` and benchmarks)."""

    data: bytes
    values: np.ndarray  # float32, dequantized: what the decoder gets back
    # Known to the encoder only (None when read from an archive):
    entropy_bits: float | None = None  # n * empirical entropy of the indices: the best any prior could do
    mse: float | None = None  # mean squared quantization error

    @property
    def bits(self) -> int:
        return 8 * len(self.data)


def _f32(x: float) -> bytes:
    return struct.pack("<f", x)


def _uniform_codebook(lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin centres of `bins` equal bins on [lo, hi] (float32 inputs, so both sides compute alike)."""
    width = (np.float64(hi) - np.float64(lo)) / bins
    return (np.float64(lo) + (np.arange(bins) + 0.5) * width).astype(np.float32)


def _nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry (the codebook sorted ascending)."""
    edges = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    return np.searchsorted(edges, values.astype(np.float64)).astype(np.int32)


def _constant(codebook: np.ndarray) -> bool:
    """A codebook of one value: nothing is coded, every value is that one."""
    return bool((codebook == codebook[0]).all())


def _gaussian_model(mean: float, std: float, lo: float, hi: float, bins: int):
    """The Gaussian N(mean, std) over the bins on [lo, hi], in index units."""
    width = (float(hi) - float(lo)) / bins
    mean_index = (float(mean) - float(lo)) / width - 0.5
    std_index = max(float(std) / width, 0.1)  # constriction needs std > 0
    return constriction.stream.model.QuantizedGaussian(0, bins - 1, mean_index, std_index)


def _categorical(counts: np.ndarray):
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def check_options(prior: str, bins: int, clip: float | None) -> None:
    if prior not in PRIORS:
        raise InvalidOptionError(f"prior must be one of {', '.join(PRIORS)}")
    if not 2 <= bins <= MAX_BINS:
        raise InvalidOptionError(f"prior bins must be between 2 and {MAX_BINS}")
    if clip is not None and not 0 <= clip < 50:
        raise InvalidOptionError("prior clip must be a percentile in [0, 50)")


def encode(values: np.ndarray, prior: str, bins: int = DEFAULT_BINS, clip: float | None = None) -> CodedVector:
    """Quantize `values` to `bins` levels and code them under `prior`; uniform bins span the
    `clip`-th to (100 - `clip`)-th percentiles (default: DEFAULT_CLIP; Lloyd-Max ignores it)."""
    check_options(prior, bins, clip)
    values = np.asarray(values, dtype=np.float32).ravel()
    if not 1 <= values.size <= MAX_VALUES or not np.isfinite(values).all():
        raise InvalidOptionError("the vector to code must have 1 to 2^24 finite values")
    if prior == "lloyd-max":
        codebook = _lloyd_max(values, bins)
        params = b"".join(_f32(c) for c in codebook)
    else:
        cut = DEFAULT_CLIP[prior] if clip is None else clip
        lo, hi = np.percentile(values, [cut, 100 - cut]).astype(np.float32)
        codebook = _uniform_codebook(lo, hi, bins)
        params = _f32(lo) + _f32(hi)
    bins = len(codebook)
    head = bytes([PRIORS.index(prior)]) + varint(bins) + varint(values.size) + params
    indices = _nearest(values, codebook)
    counts = np.bincount(indices, minlength=bins)
    if prior == "gaussian":
        mean, std = np.float32(values.mean()), np.float32(values.std())
        head += _f32(mean) + _f32(std)
    else:
        head += b"".join(varint(int(c)) for c in counts)
    words = np.zeros(0, dtype=np.uint32)
    if not _constant(codebook):
        model = _gaussian_model(mean, std, lo, hi, bins) if prior == "gaussian" else _categorical(counts)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(indices, model)
        words = encoder.get_compressed()
    data = head + varint(len(words)) + words.astype("<u4").tobytes()
    p = counts[counts > 0] / values.size
    entropy_bits = float(-(p * np.log2(p)).sum() * values.size)
    decoded = decode(data)
    return CodedVector(data, decoded, entropy_bits, float(np.mean((values - decoded) ** 2)))


def _lloyd_max(values: np.ndarray, bins: int) -> np.ndarray:
    """Sorted float32 centroids of 1-D k-means (fewer when the values have fewer distinct levels)."""
    from sklearn.cluster import KMeans  # imported here: only encoders of this prior need it

    k = min(bins, len(np.unique(values)))  # k-means cannot find more clusters than distinct values
    km = KMeans(n_clusters=k, n_init=4, random_state=0).fit(values.reshape(-1, 1).astype(np.float64))
    return np.sort(km.cluster_centers_.ravel()).astype(np.float32)


def decode(data: bytes) -> np.ndarray:
    """The dequantized float32 values coded in `data`; CorruptArchiveError if it is malformed."""
    r = Reader(data)
    kind = r.take(1)[0]
    if kind >= len(PRIORS):
        raise CorruptArchiveError(f"unknown hyperprior {kind}")
    prior = PRIORS[kind]
    bins, n = r.varint(MAX_BINS), r.varint(MAX_VALUES)
    if bins < 1 or n < 1:
        raise CorruptArchiveError("bad hyperprior size")
    if prior == "lloyd-max":
        codebook = np.array([r.f32() for _ in range(bins)], dtype=np.float32)
    else:
        lo, hi = r.f32(), r.f32()
        codebook = _uniform_codebook(lo, hi, bins)
    if not np.isfinite(codebook).all():
        raise CorruptArchiveError("hyperprior codebook is not finite")
    if prior == "gaussian":
        mean, std = r.f32(), r.f32()
        if not (math.isfinite(mean) and math.isfinite(std) and hi >= lo):
            raise CorruptArchiveError("bad hyperprior parameters")
    else:
        counts = np.array([r.varint(MAX_VALUES) for _ in range(bins)], dtype=np.int64)
        if counts.sum() != n:
            raise CorruptArchiveError("hyperprior histogram does not match its size")
    words = np.frombuffer(r.take(4 * r.varint(len(data))), dtype="<u4").astype(np.uint32)
    if not r.at_end():
        raise CorruptArchiveError("hyperprior has trailing bytes")
    if _constant(codebook):
        return np.full(n, codebook[0], dtype=np.float32)
    model = _gaussian_model(mean, std, lo, hi, bins) if prior == "gaussian" else _categorical(counts)
    try:
        indices = constriction.stream.queue.RangeDecoder(words).decode(model, n)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CorruptArchiveError(f"hyperprior data cannot be decoded: {e}") from e
    return codebook[indices]
