"""arithmetic.py: the arithmetic is exact where it claims to be, accurate where it approximates, and
the fused C++ kernels give the torch code's bits."""

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmzip.exact import arithmetic, build


@pytest.fixture
def torch_only(monkeypatch):
    """Run arithmetic.py's torch code (the definition) instead of the fused kernels."""
    monkeypatch.setattr(arithmetic, "_fused", lambda *tensors: None)


def test_kernels_build_here():
    """CI's machines have a compiler: the fast path must not silently fall back there."""
    assert arithmetic.kernels() is not None


def failing_tools(folder: Path) -> Path:
    """A folder of a ninja and C++ compilers that fail and note that they were called."""
    folder.mkdir()
    for tool in ("ninja", "c++", "g++", "gcc", "cc"):
        (folder / tool).write_text(f"#!/bin/sh\necho {tool} >> {folder}/called\nexit 1\n")
        (folder / tool).chmod(0o755)
    return folder


def test_without_a_toolchain_the_torch_path_runs_after_one_warning(tmp_path, monkeypatch, caplog):
    tools = failing_tools(tmp_path / "tools")
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tools))
    with caplog.at_level(logging.INFO, logger="llmzip"):
        assert build.load(arithmetic.KERNEL_DEFINES) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runs on the torch reference path" in warnings[0], warnings


@pytest.mark.slow
def test_built_kernels_are_imported_whatever_comes_first_on_path(tmp_path):
    """Processes started with the venv's bin/ first on PATH and without it (its ninja and
    compilers then fail) in turn load the built library: nothing runs ninja or compiles."""
    assert arithmetic.kernels() is not None
    library = build.build_directory(arithmetic.KERNEL_DEFINES) / f"{build.NAME}.so"
    built = library.stat().st_mtime_ns
    tools = failing_tools(tmp_path / "tools")
    venv = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    code = "from llmzip.exact import arithmetic; assert arithmetic.kernels() is not None"
    for path in (venv, f"{tools}:/usr/bin:/bin") * 2:
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PATH": path}, check=True, timeout=120)
    assert not (tools / "called").exists() and library.stat().st_mtime_ns == built


def test_a_build_killed_midway_does_not_hang_the_next_process():
    """A killed build leaves torch's lock file behind, on which torch's loader waits forever, and
    no mark that it finished: the next process builds (here: links nothing new) and marks it."""
    assert arithmetic.kernels() is not None
    directory = build.build_directory(arithmetic.KERNEL_DEFINES)
    (directory / build.BUILT).unlink()
    (directory / "lock").touch()
    code = "from llmzip.exact import arithmetic; assert arithmetic.kernels() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert (directory / build.BUILT).exists()


def test_exp2_neg_is_accurate_and_exact_at_the_ends():
    d = torch.cat([torch.linspace(0, 30, 100_001), torch.tensor([0.0, 126.5, 127, 200, math.inf])])
    got = arithmetic.exp2_neg(d)
    assert (got[:100_001].double() / 2.0 ** -d[:100_001].double() - 1).abs().max() < 5e-7
    assert got[-5] == 1 and abs(got[-4] / 2**-126.5 - 1) < 1e-6 and got[-3:].tolist() == [0.0, 0.0, 0.0]


def test_silu_and_softmax_weights_are_accurate():
    x = torch.linspace(-90, 90, 200_001)
    assert (arithmetic.silu_mul(x, torch.ones_like(x)) - torch.nn.functional.silu(x)).abs().max() < 2e-6
    logits = torch.randn(3, 1000) * 5
    weights = arithmetic.softmax_weights(logits)
    assert (weights / weights.sum(-1, keepdim=True) - torch.softmax(logits, -1)).abs().max() < 1e-6
    assert (weights.amax(-1) == 1).all()


def test_kernels_give_the_torch_codes_bits(torch_only, monkeypatch):
    """Random inputs, edge values and masked keys: fused and torch paths agree bit for bit."""
    rng = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4096, generator=rng) * 30, torch.tensor([0.0, -0.0, 88.0, -88.0, 1e-30, -1e30])])
    y = torch.randn(x.shape, generator=rng)
    logits = torch.randn(5, 3000, generator=rng) * 8
    logits[4, ::7] = -1e30  # far below the top: weight exactly 0
    q = torch.randint(-511, 512, (2, 3, 12, 64), generator=rng).float()
    k = torch.randint(-511, 512, (2, 3, 40, 64), generator=rng).float()
    v = torch.randint(-127, 128, (2, 3, 40, 64), generator=rng).float()
    scales = [
        torch.rand(*shape, generator=rng) * 1e-3 + 1e-5 for shape in ((2, 3, 12, 1), (2, 3, 1, 40), (2, 3, 1, 40))
    ]
    positions = torch.tensor([5, 17, 39, 0] * 3)
    step = torch.tensor([39, 20, 7])  # three queries: a decoding step reads the integer cache directly
    long_q = q[..., :3, :]
    long_k = torch.randint(-511, 512, (2, 3, 300, 64), generator=rng).float()
    long_v = torch.randint(-127, 128, (2, 3, 300, 64), generator=rng).float()
    long_scales = [torch.rand(2, 3, 1, 300, generator=rng) * 1e-3 + 1e-5 for _ in range(2)]
    far = torch.tensor([299, 2, 130])
    k8 = torch.randint(-127, 128, k.shape, generator=rng).char()  # 8-bit keys (the Llama's forward 3)
    magnitudes = torch.logspace(-5, 2, 64)[:, None]  # norms' inputs, each row its own size
    wide_rows = torch.cat([x[:3840].view(6, 640) * magnitudes[:6], torch.zeros(1, 640)])
    heads = torch.randn(2, 5, 12, 64, generator=rng) * magnitudes[:12].view(12, 1)  # [rows, T, heads, dim]
    cos, sin = arithmetic.rotary_table(40, 64, 10000.0)
    cos40, sin40 = arithmetic.rotary_table(5, 40, 100.0)
    rotated_scale = arithmetic.rotary_quantize(heads[:, :, 3:9], cos[30:35, None], sin[30:35, None], 511)[1]
    sink_q = torch.randint(-723, 724, q.shape, generator=rng).float()  # queries turned elsewhere, q's scales
    weights = torch.randn(6, 576, generator=rng, dtype=torch.float64) * magnitudes[:6].double()  # learning's

    def rotated_in_place(w: torch.Tensor) -> list[torch.Tensor]:
        w, columns = w.clone(), w.T.contiguous()
        return [
            arithmetic.rotate_weights(w, 1 / 24, out=w),
            arithmetic.rotate_weights(columns, 1 / 24, out=columns, dim=0),
        ]

    def quantized_in_place(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.clone()
        return arithmetic.quantize(w, 229, out=w)

    def calls() -> list[torch.Tensor]:
        return [
            arithmetic.silu_mul(x, y),
            arithmetic.hadamard(torch.round(x[:3840]).view(6, 640)),  # Paley 20, Sylvester 32
            arithmetic.hadamard(torch.round(x[:3072]).view(2, 1536)),
            arithmetic.hadamard(torch.round(x[:3456]).view(6, 576)),  # 12, 12, 4
            arithmetic.softmax_weights(logits),
            arithmetic.softmax_weights(logits, torch.zeros(5, 3010, dtype=torch.float64)),
            *arithmetic.quantize(x[:4096].view(64, 64), 127),
            *arithmetic.quantize(torch.cat([x[:4096].view(64, 64).T, torch.zeros(1, 64)]), 511),  # strided, a zero row
            *arithmetic.quantize(
                torch.cat([x[:4096].view(64, 64).double() / 7, torch.zeros(1, 64)]), 229
            ),  # learning's
            arithmetic.rotate_weights(weights, 1 / 24),
            arithmetic.rotate_weights(weights.T.contiguous().T, 1 / 24, transpose=True),  # strided
            arithmetic.rotate_weights(weights.T.contiguous(), 1 / 24, dim=0),  # each column
            *rotated_in_place(weights),
            *quantized_in_place(weights * 1e3),
            *arithmetic.quantize_normed(x[:4096].view(64, 64) * magnitudes, 1e-5),  # eps matters in the small rows
            *arithmetic.quantize_normed(wide_rows, 1e-6, 8191),  # squares past 2**24: float64
            *arithmetic.quantize_rotated(x[:3456].view(6, 576) * magnitudes[:6], 1023),  # 12, 12, 4
            *arithmetic.quantize_rotated(wide_rows, 8191),  # 20, 32
            *arithmetic.rotary_quantize(heads[:, :, 3:9], cos[30:35, None], sin[30:35, None], 511),  # strided
            *arithmetic.rotary_quantize(heads[..., :40], cos40[:5, None], sin40[:5, None], 127),
            *arithmetic.rotary_quantize(heads[:, :, 3:9], cos[[7] * 5, None], sin[[7] * 5, None], 723, rotated_scale),
            *arithmetic.rotary_quantize(heads[:, :, 3:9], cos[[7] * 5, None], sin[[7] * 5, None], 500, rotated_scale),
            arithmetic.attention(q, scales[0], k, scales[1], v, scales[2], positions),
            arithmetic.attention(q[..., :3, :], scales[0][..., :3, :], k.short(), scales[1], v.char(), scales[2], step),
            arithmetic.attention(q[..., :3, :], scales[0][..., :3, :], k8, scales[1], v.char(), scales[2], step, 7, 3),
            arithmetic.attention(
                q[..., :3, :40],
                scales[0][..., :3, :],
                k8[..., :40].contiguous(),
                scales[1],
                v[..., :40].char(),
                scales[2],
                step,
            ),
            arithmetic.attention(q, scales[0], k.short(), scales[1], v.char(), scales[2], positions),  # 12 queries
            arithmetic.attention(
                q[..., :5, :], scales[0][..., :5, :], k.short(), scales[1], v.char(), scales[2], positions[:5]
            ),
            arithmetic.attention(q, scales[0], k, scales[1], v, scales[2], positions, window=7),  # sliding window
            arithmetic.attention(
                q[..., :3, :], scales[0][..., :3, :], k.short(), scales[1], v.char(), scales[2], step, 7
            ),
            arithmetic.attention(q, scales[0], k, scales[1], v, scales[2], positions, 7, 3),  # and attention sinks
            arithmetic.attention(
                q[..., :3, :], scales[0][..., :3, :], k.short(), scales[1], v.char(), scales[2], step, 7, 3
            ),
            arithmetic.attention(
                q[..., :3, :40],
                scales[0][..., :3, :],
                k[..., :40].short(),
                scales[1],
                v[..., :40].char(),
                scales[2],
                step,
            ),  # head_dim 40: the kernel's general loops
            arithmetic.attention(
                long_q,
                scales[0][..., :3, :],
                long_k.short(),
                long_scales[0],
                long_v.char(),
                long_scales[1],
                far,
                100,
                4,
            ),  # blocks of keys: a query sees its sinks, one only keys before the window, one a window across blocks
            arithmetic.attention(
                q, scales[0], k8.float(), scales[1], v, scales[2], positions, 7, 3, sink_q
            ),  # pinned sinks
            arithmetic.attention(q, scales[0], k8, scales[1], v.char(), scales[2], positions, 7, 3, sink_q),
            arithmetic.attention(
                q[..., :3, :], scales[0][..., :3, :], k8, scales[1], v.char(), scales[2], step, 7, 3, sink_q[..., :3, :]
            ),
        ]

    reference = calls()
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(reference, calls(), strict=True))
    turned = [arithmetic.rotary_quantize(heads[:, :, 3:9], cos[[7] * 5, None], sin[[7] * 5, None], n, rotated_scale)[0]
              for n in (723, 500)]  # fmt: skip
    assert turned[0].abs().max() > 511 and turned[1].abs().max() == 500  # past the queries' levels; clipped


def test_gelu_tanh_is_accurate():
    x = torch.linspace(-90, 90, 200_001)
    reference = torch.nn.functional.gelu(x.double(), approximate="tanh")
    assert (arithmetic.gelu_tanh_mul(x, torch.ones_like(x)) - reference).abs().max() < 2e-6


@pytest.mark.parametrize(("window", "sinks"), [(None, 0), (5, 0), (5, 2)])
def test_masked_keys_change_nothing(torch_only, window, sinks):
    """A query attends keys up to its position (the last `window` of them and the first
    `sinks`): the keys outside do not move a bit."""
    rng = torch.Generator().manual_seed(1)
    q = torch.randint(-511, 512, (1, 1, 4, 16), generator=rng).float()
    k = torch.randint(-511, 512, (1, 1, 30, 16), generator=rng).float()
    v = torch.randint(-127, 128, (1, 1, 30, 16), generator=rng).float()
    ks, vs = torch.rand(1, 1, 1, 30, generator=rng) + 0.1, torch.rand(1, 1, 1, 30, generator=rng) + 0.1
    qs = torch.rand(1, 1, 4, 1, generator=rng) * 1e-4
    positions = torch.tensor([3, 9, 19, 29])
    full = arithmetic.attention(q, qs, k, ks, v, vs, positions, window, sinks)
    for i, p in enumerate(positions.tolist()):
        first = max(0, p + 1 - (window or 30))
        seen = torch.tensor([j for j in range(p + 1) if j >= first or j < sinks])  # in another order, too
        seen = torch.cat([seen[-1:], seen[:-1]])
        alone = arithmetic.attention(q[..., i : i + 1, :], qs[..., i : i + 1, :], k[..., seen, :], ks[..., seen],
                                v[..., seen, :], vs[..., seen], torch.tensor([len(seen) - 1]))  # fmt: skip
        assert torch.equal(alone, full[..., i : i + 1, :])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("k", [64, 75, 576, 1040, 1536, 3072])
def test_linear_is_the_exact_integer_product(k, fused, monkeypatch):
    """Largest-magnitude integers of both signs, summed in the kernel's int32 (odd K, a part
    block of channels, part tiles of rows) or in float32 K-pieces, equal int64 arithmetic."""
    if not fused:
        monkeypatch.setattr(arithmetic, "kernels", lambda: None)
    rng = np.random.default_rng(k)
    weight = torch.from_numpy(rng.standard_normal((45, k)))
    weight[:, 0] = 100.0  # each row's maximum is its first column: those entries quantize to +-levels
    linear = arithmetic.ExactLinear.of(weight)
    x = torch.from_numpy(rng.choice([-127.0, 127.0], (67, k))).float()
    expected = (x.long() @ linear.int_weight.long().T).float() * linear.scale
    for rows in (1, 5, 13, 67):
        assert torch.equal(linear(x[:rows], torch.ones(rows, 1)), expected[:rows])
    assert max(b - a for a, b in linear.bounds) * 127 * linear.int_weight.abs().max() < 2**24


@pytest.mark.parametrize(("low", "high", "dtype"), [(-256, 255, torch.int8), (-257, 256, torch.int16)])
def test_weights_are_packed_in_9_bits_where_they_fit(low, high, dtype):
    """Every integer of [-256, 255] in every lane of the kernels' compact packing (a weight
    2a + b: a byte and a bit) comes back exactly; wider weights keep 16 bits."""
    if arithmetic.kernels() is None:
        pytest.skip("no kernels here")
    k = 579  # odd: a padded pair
    weight = (torch.arange(45 * k) * 7 % (high - low + 1) + low).view(45, k)
    linear = arithmetic.ExactLinear(weight, torch.ones(45))
    assert linear.packed.dtype == dtype
    x = torch.from_numpy(np.random.default_rng(0).integers(-127, 128, (13, k))).float()
    expected = (x.long() @ weight.long().T).float()
    for rows in (1, 13):
        assert torch.equal(linear(x[:rows], torch.ones(rows, 1)), expected[:rows])


@pytest.mark.parametrize("n", [4, 12, 64, 576, 640, 1536, 2048])
def test_hadamard_matrices_are_hadamard_and_applied_exactly(n):
    factors, sylvester = arithmetic.hadamard_factors(n)
    h = torch.ones(1, 1, dtype=torch.float64)
    two = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for f in [*factors, *[two] * (sylvester.bit_length() - 1)]:  # Sylvester's matrix: H_2 ⊗ ... ⊗ H_2
        h = torch.kron(h, f)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))
    x = torch.randint(-8191, 8192, (3, n)).double()
    assert torch.equal(arithmetic.hadamard(x), x @ h)
    assert torch.equal(arithmetic.hadamard(x.float()), (x @ h).float())


def test_rotary_table_matches_the_float64_reference():
    cos, sin = arithmetic.rotary_table(8192, 64, 100000.0)
    angles = np.arange(8192)[:, None] * 100000.0 ** (-np.arange(0, 64, 2) / 64)
    assert np.abs(cos[:, :32].double().numpy() - np.cos(angles)).max() < 1e-7
    assert np.abs(sin[:, 32:].double().numpy() - np.sin(angles)).max() < 1e-7


def test_sqrt_is_correctly_rounded():
    """Against numpy's sqrt (the SSE instruction, correctly rounded), over every exponent and the
    ends: torch.sqrt missed on 0.7% of these on an Intel Xeon (MKL's vector math)."""
    rng = np.random.default_rng(0)
    x = (rng.random(1_000_000) * 10.0 ** rng.integers(-40, 39, 1_000_000)).astype(np.float32)
    x[:6] = [0.0, 1.0, 2.0, 1e-45, 3.4e38, 0.25]
    assert np.array_equal(arithmetic.sqrt(torch.from_numpy(x)).numpy(), np.sqrt(x))


def test_quantize_stays_in_range_and_keeps_zero_rows_finite():
    x = torch.cat([torch.randn(6, 100) * 1e4, torch.zeros(1, 100)])
    q, scale = arithmetic.quantize(x, 127)
    assert q.abs().max() == 127 and torch.isfinite(scale).all() and (q[-1] == 0).all()
    assert torch.equal(q, torch.round(q))
