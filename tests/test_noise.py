"""The noise kernel through the library API: exact statistics, rounding, clipping."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import noiseaug
from noiseaug import noise, seeding


def expected_tail(n: int, sigma: float, k: float) -> float:
    """Expected count of |round(σZ)| >= k·σ among n draws."""
    threshold = math.ceil(k * sigma - 0.5) - 0.5  # smallest integer reached, minus rounding
    return n * math.erfc(threshold / sigma / math.sqrt(2))


@pytest.mark.parametrize("dtype,centre,scale", [(np.uint8, 128, 1.0), (np.uint16, 32768, 257.0)])
def test_residual_is_gaussian_with_requested_sigma(dtype, centre, scale):
    sigma = 10.0
    x = np.full((1000, 1000, 3), centre, dtype)
    y = noiseaug.add_noise(x, noise.image_sigma(sigma, dtype), np.random.default_rng(7))
    r = (y.astype(np.float64) - centre) / scale
    n = r.size
    assert abs(r.mean()) < 5 * sigma / math.sqrt(n)  # no -0.5 truncation bias
    assert abs(r.std() - sigma) < 0.0015 * sigma  # ten standard errors under the 0.39 % of a x256 scale
    tail = np.count_nonzero(np.abs(r) * scale >= 4 * sigma * scale)
    want = expected_tail(n, sigma * scale, 4)
    assert 0.7 * want < tail < 1.3 * want  # tails present, in the right amount


def test_rounding_is_to_nearest_on_the_integer_grid():
    x = np.full((400, 500), 100, np.uint8)
    y = noiseaug.add_noise(x, 0.3, np.random.default_rng(1))
    # P(|0.3 Z| < 0.5) = P(|Z| < 5/3) = 0.9044: rounding, not truncation or flooring
    unchanged = np.count_nonzero(y == 100) / y.size
    assert abs(unchanged - math.erf(5 / 3 / math.sqrt(2))) < 0.005
    assert abs(np.count_nonzero(y == 101) - np.count_nonzero(y == 99)) < 0.05 * np.count_nonzero(y != 100)


def test_per_channel_noise_is_uncorrelated_and_shared_is_identical():
    x = np.full((600, 600, 3), 128, np.uint8)
    per = noiseaug.add_noise(x, 10, np.random.default_rng(3)).astype(np.float64) - 128
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert abs(np.corrcoef(per[..., a].ravel(), per[..., b].ravel())[0, 1]) < 0.01
    shared = noiseaug.add_noise(x, 10, np.random.default_rng(3), shared=True)
    assert np.array_equal(shared[..., 0], shared[..., 1]) and np.array_equal(shared[..., 1], shared[..., 2])
    assert shared[..., 0].std() > 9


def test_clipping_piles_at_the_limits_instead_of_wrapping():
    low = noiseaug.add_noise(np.zeros((500, 500), np.uint8), 10, np.random.default_rng(4))
    high = noiseaug.add_noise(np.full((500, 500), 255, np.uint8), 10, np.random.default_rng(4))
    assert low.max() < 80 and high.min() > 175  # wrap-around would reach the other end
    # P(round(10 Z) <= 0) = Φ(0.05)
    want = 0.5 * (1 + math.erf(0.05 / math.sqrt(2)))
    assert abs(np.count_nonzero(low == 0) / low.size - want) < 0.005
    assert abs(np.count_nonzero(high == 255) / high.size - want) < 0.005


def test_float_images_are_clipped_to_unit_range_and_not_rounded():
    x = np.full((300, 300), 0.5, np.float32)
    y = noiseaug.add_noise(x, 0.2, np.random.default_rng(5))
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    inside = y[(y > 0) & (y < 1)]
    assert len(np.unique(inside)) > 0.9 * inside.size  # continuous values, not a grid


def test_alpha_channel_is_untouched():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (200, 300, 4), dtype=np.uint8)
    y = noiseaug.add_noise(x, 20, np.random.default_rng(6), alpha=True)
    assert np.array_equal(y[..., 3], x[..., 3])
    assert np.count_nonzero(y[..., :3] != x[..., :3]) > 0.9 * x[..., :3].size


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])  # the banded paths (8-bit images use the table)
def test_noise_does_not_depend_on_band_size(monkeypatch, dtype):
    x = (np.random.default_rng(0).random((333, 517, 3)) * (65535 if dtype == np.uint16 else 1)).astype(dtype)
    sigma = noise.image_sigma(8, dtype)
    first = noiseaug.add_noise(x, sigma, np.random.default_rng(11))
    bands = []
    real = noise._work_dtype
    monkeypatch.setattr(noise, "BAND_VALUES", 1000)
    monkeypatch.setattr(noise, "_work_dtype", lambda *a: bands.append(1) or real(*a))
    second = noiseaug.add_noise(x, sigma, np.random.default_rng(11))
    assert bands, "the banded path was not taken"
    assert np.array_equal(first, second) and not np.array_equal(first, x)


def test_24_bit_grid_in_int32_stays_on_multiples_of_256():
    data = np.zeros((50000, 2), np.int32)
    sigma = 1e-3 * 2**31
    noise.noise_inplace(data, sigma, np.random.default_rng(2), lo=-2**31, hi=2**31 - 256, step=256)
    assert np.all(data % 256 == 0)
    assert abs(data.std() / sigma - 1) < 0.02
    assert len(np.unique(data)) > 1000  # finer than 16-bit steps: the 24-bit grid is used


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32]),
                 hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12),
                 elements={"min_value": 0, "max_value": 1, "allow_nan": False}),
    sigma=st.floats(0, 300, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_any_image_stays_in_range_and_sigma_zero_is_identity(x, sigma, seed):
    x = x if x.dtype.kind == "f" else (x * np.iinfo(x.dtype).max).astype(x.dtype)  # the range's ends too
    y = noiseaug.add_noise(x, noise.image_sigma(sigma, x.dtype), np.random.default_rng(seed))
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.dtype.kind == "f":  # floats can leave [0, 1]; integers cannot, so the check is here
        assert np.all((y >= 0) & (y <= 1))
    assert np.array_equal(noiseaug.add_noise(x, 0.0, np.random.default_rng(seed)), x)
    if x.shape[-1] >= 2:
        z = noiseaug.add_noise(x, sigma, np.random.default_rng(seed), alpha=True)
        assert np.array_equal(z[..., -1], x[..., -1])


def test_negative_or_nan_sigma_is_refused():
    with pytest.raises(ValueError):
        noiseaug.add_noise(np.zeros((2, 2), np.uint8), -1.0)
    with pytest.raises(ValueError):
        noiseaug.add_noise(np.zeros((2, 2), np.uint8), float("nan"))


def test_add_noise_refuses_what_it_cannot_noise_in_one_line_and_takes_a_seed():
    """float16 gave numpy's "Unsupported dtype float16 for standard_normal", a RandomState or an int rng an
    AttributeError, and NaN samples came back NaN without a word (the CLI refuses such a file)."""
    with pytest.raises(TypeError, match="add_noise needs an integer, float32 or float64 array, not float16"):
        noiseaug.add_noise(np.zeros((5, 5), np.float16), 0.04)
    with pytest.raises(TypeError, match="rng must be a numpy Generator .*not RandomState"):
        noiseaug.add_noise(np.zeros((5, 5), np.uint8), 10, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="add_noise needs finite samples"):
        noiseaug.add_noise(np.array([[0.5, np.nan]], np.float32), 0.04)
    x = np.full((40, 40), 128, np.uint8)
    assert np.array_equal(noiseaug.add_noise(x, 10, rng=5), noiseaug.add_noise(x, 10, np.random.default_rng(5)))


@contextlib.contextmanager
def _kernel_path(name: str, monkeypatch) -> Iterator[str]:
    """Run the table noise one way: "avx2" or "scalar" (the compiled loops) or "numpy" (the twin)."""
    kernel = noise._kernel
    if name == "numpy":
        monkeypatch.setattr(noise, "_kernel", None)
        yield name
        return
    if kernel is None:
        pytest.skip(f"no compiled kernel beside {noise.__file__}: built nowhere (no compiler at install time), "
                    "or elsewhere (a non-editable install builds it in site-packages; run its tests from there)")
    before = kernel.simd()
    try:
        kernel.simd(name == "avx2")
    except RuntimeError as exc:  # no AVX2 on this CPU, or a build without it
        pytest.skip(f"the AVX2 loop cannot run here: {exc}")
    # the compiled loops switch themselves off when they disagree with numpy: that must not hide here
    assert noise.kernel_problem() is None, noise.kernel_problem()
    try:
        yield name
    finally:
        kernel.simd(before)


@pytest.fixture(params=["avx2", "scalar"])
def compiled_loops(request, monkeypatch):
    """Each of the compiled loops, to compare with the numpy twin."""
    with _kernel_path(request.param, monkeypatch) as name:
        yield name


@pytest.fixture(params=["avx2", "scalar", "numpy"])
def kernel_path(request, monkeypatch):
    """Each way the table noise can run, for the statistics tests."""
    with _kernel_path(request.param, monkeypatch) as name:
        yield name


def test_8_bit_table_path_has_the_exact_law_of_rounded_noise(kernel_path):
    """Each value of round(σZ) appears with its exact probability, tails and escapes included."""
    sigma, n = 23.7, 4_000_000
    x = np.full(n, 128, np.uint8)
    r = noiseaug.add_noise(x, sigma, seeding.generator(12)).astype(np.int64) - 128
    counts = np.bincount(r + 128, minlength=256)
    for k in range(-100, 101):
        p = 0.5 * (math.erfc((k - 0.5) / (sigma * math.sqrt(2))) - math.erfc((k + 0.5) / (sigma * math.sqrt(2))))
        expected = n * p
        assert abs(counts[k + 128] - expected) < 5 * math.sqrt(expected) + 2, (k, counts[k + 128], expected)
    beyond = int(np.count_nonzero(np.abs(r) >= 95))  # past 4σ: the tails are there, in the right amount
    want = n * math.erfc(94.5 / (sigma * math.sqrt(2)))
    assert abs(beyond - want) < 5 * math.sqrt(want)


def _generators(seed: int) -> list[np.random.Generator]:
    """An SFC64 from a seed sequence (what runs use: stepped inline in C) and a PCG64 (through its capsule)."""
    return [seeding.generator(seed), np.random.default_rng(seed)]


@pytest.mark.parametrize("kind", ["sfc64", "pcg64"])
def test_compiled_and_numpy_kernels_give_the_same_bytes(monkeypatch, kind, compiled_loops):
    pick = 0 if kind == "sfc64" else 1
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 256, (301, 257, 3), dtype=np.uint8), {}),
             (rng.integers(0, 256, (200, 199, 4), dtype=np.uint8), {"alpha": True}),
             (rng.integers(0, 256, (200, 199, 4), dtype=np.uint8), {"alpha": True, "shared": True}),
             (rng.integers(0, 256, (123, 77), dtype=np.uint8), {}),
             (rng.integers(0, 256, (3, 7, 3), dtype=np.uint8), {})]  # 63 values: a vector part and a tail
    for pixels, options in cases:
        for sigma in (0.4, 10, 150):
            compiled_rng, plain_rng = _generators(3)[pick], _generators(3)[pick]
            compiled = noiseaug.add_noise(pixels, sigma, compiled_rng, **options)
            compiled_clips = noise.noise_inplace(pixels.copy(), sigma, _generators(3)[pick], lo=0, hi=255)
            with monkeypatch.context() as patch:
                patch.setattr(noise, "_kernel", None)
                plain = noiseaug.add_noise(pixels, sigma, plain_rng, **options)
                plain_clips = noise.noise_inplace(pixels.copy(), sigma, _generators(3)[pick], lo=0, hi=255)
            assert np.array_equal(compiled, plain), (pixels.shape, options, sigma)
            assert compiled_clips == plain_clips
            # both paths leave the generator at the same point: the next draws agree
            assert compiled_rng.bit_generator.random_raw(3).tolist() == plain_rng.bit_generator.random_raw(3).tolist()
            assert compiled_rng.spawn(1)[0].bit_generator.random_raw(2).tolist() == \
                plain_rng.spawn(1)[0].bit_generator.random_raw(2).tolist()  # and so do its later children


@pytest.mark.parametrize("kind", ["sfc64", "pcg64"])
def test_16_bit_pcm_table_path_is_exact(kind, kernel_path):
    sigma = 0.004 * 32768
    y = np.zeros(2_000_000, np.int16)
    noise.noise_inplace(y, sigma, _generators(4)[0 if kind == "sfc64" else 1], lo=-32768, hi=32767)
    counts = np.bincount(y.astype(np.int64) + 2000, minlength=4001)
    for k in range(-300, 301, 7):
        p = 0.5 * (math.erfc((k - 0.5) / (sigma * math.sqrt(2))) - math.erfc((k + 0.5) / (sigma * math.sqrt(2))))
        assert abs(counts[k + 2000] - y.size * p) < 5 * math.sqrt(y.size * p) + 2, k
    loud = np.full(100_000, 32000, np.int16)  # clipping at the top of the range, not wrapping
    noise.noise_inplace(loud, 3000.0, np.random.default_rng(5), lo=-32768, hi=32767)
    assert loud.min() > 15000 and np.count_nonzero(loud == 32767) > 0.3 * loud.size


@pytest.mark.parametrize("kind", ["sfc64", "pcg64"])
def test_16_bit_pcm_compiled_loop_matches_its_numpy_twin(monkeypatch, kind, compiled_loops):
    """In blocks, as audio is streamed (the escapes' streams carry on); loud, so that values clip."""
    loud = np.random.default_rng(8).integers(-32768, 32768, 2_000_003).astype(np.int16)
    compiled, plain = loud.copy(), loud.copy()
    clips = []
    for out, kernel in ((compiled, noise._kernel), (plain, None)):
        monkeypatch.setattr(noise, "_kernel", kernel)
        rng = _generators(4)[0 if kind == "sfc64" else 1]
        streams = noise.escape_stream(rng)
        clips.append(sum(noise.noise_inplace(out[start:start + 300_001], 2600.0, rng, lo=-32768, hi=32767,
                                             escapes=streams) for start in range(0, out.size, 300_001)))
    assert np.array_equal(compiled, plain) and clips[0] == clips[1] > 0


def test_alpha_only_image_is_returned_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 1), dtype=np.uint8)
    assert np.array_equal(noiseaug.add_noise(pixels, 10, np.random.default_rng(1), alpha=True), pixels)


def test_one_generator_in_two_roles_gives_the_numpy_twins_bytes(monkeypatch):
    """The compiled loops interleave their streams; given one generator twice, they step aside."""
    x = np.zeros(200_001, np.int16)
    outputs = []
    for kernel in (noise._kernel, None):
        monkeypatch.setattr(noise, "_kernel", kernel)
        rng = seeding.generator(7)
        y = x.copy()
        noise.noise_inplace(y, 3000.0, rng, lo=-32768, hi=32767, escapes=noise.EscapeStreams(rng, rng))
        outputs.append((y, rng.bit_generator.random_raw(2).tolist()))
    assert np.array_equal(outputs[0][0], outputs[1][0]) and outputs[0][1] == outputs[1][1]


def test_unaligned_pcm_gets_the_same_noise_as_aligned():
    values = np.random.default_rng(0).integers(-3000, 3000, 10_001).astype(np.int16)
    raw = bytearray(values.nbytes + 1)
    unaligned = np.frombuffer(raw, np.int16, offset=1)
    unaligned[:] = values
    assert not unaligned.flags.aligned
    aligned = values.copy()
    for data in (aligned, unaligned):
        noise.noise_inplace(data, 300.0, seeding.generator(2), lo=-32768, hi=32767)
    assert np.array_equal(aligned, unaligned)


def test_table_probabilities_are_the_exact_law_tails_included():
    """Rebuilt from the three table levels, P(k) equals P(k - 1/2 <= σZ < k + 1/2) to 1e-12 (tails lumped)."""
    for sigma, lump in ((0.3, noise.LUMP8), (10.0, noise.LUMP8), (23.7, noise.LUMP8), (90.0, noise.LUMP8),
                        (327.68, noise.LUMP16)):
        law = noise._rounded_law(sigma, lump)
        mark = np.iinfo(law.first.dtype).min
        ks = law.values.astype(np.int64)
        first = np.bincount(law.first[law.first != mark].astype(np.int64) + lump, minlength=ks.size) / 65536
        second = np.bincount(law.second[law.second != mark].astype(np.int64) + lump, minlength=ks.size) / 65536
        escape1, escape2 = np.mean(law.first == mark), np.mean(law.second == mark)
        last = np.diff(np.concatenate([[0.0], law.cdf]))
        rebuilt = first + escape1 * (second + escape2 * last)
        s2 = sigma * math.sqrt(2)
        exact = np.array([0.5 * (math.erfc((abs(k) - 0.5) / s2) - math.erfc((abs(k) + 0.5) / s2)) if k else
                          math.erf(0.5 / s2) for k in ks])
        exact[0] = exact[-1] = 0.5 * math.erfc((lump - 0.5) / s2)
        assert np.max(np.abs(rebuilt - exact)) < 1e-12, sigma
        assert escape1 > 0 and escape2 > 0  # every level is in use


def test_last_escape_stage_draws_its_own_law(monkeypatch, kernel_path):
    """Every draw forced through the last level (53-bit uniforms on the leftover law) lands where that law says."""
    real = noise._rounded_law(23.7, noise.LUMP8)
    mark = np.iinfo(np.int16).min
    forced = noise._Law(np.full(65536, mark, np.int16), np.full(65536, mark, np.int16), real.values, real.cdf)
    monkeypatch.setattr(noise, "_rounded_law", lambda sigma, lump=noise.LUMP8: forced)
    n = 300_000
    r = noiseaug.add_noise(np.full(n, 128, np.uint8), 23.7, seeding.generator(5)).astype(np.int64) - 128
    p = np.diff(np.concatenate([[0.0], real.cdf]))
    counts = np.bincount(r + 256, minlength=513)
    for k in range(-120, 121):
        expected = n * p[k + 256]
        assert abs(counts[k + 256] - expected) < 5 * math.sqrt(expected) + 3, (k, counts[k + 256], expected)


@settings(max_examples=300, deadline=None)
@given(entropy=st.integers(0, 2**200), key=st.lists(st.integers(0, 2**70), max_size=12), spawned=st.integers(0, 3))
def test_compiled_seed_sequence_gives_numpys_words_and_children(entropy, key, spawned):
    """Seeds are the contract of every manifest: the compiled mixing must equal numpy's SeedSequence exactly."""
    assert seeding._compiled_seeds(), "the compiled SeedSequence is not in use (kernel missing or disagreeing)"
    ours, numpys = seeding.CompiledSeedSequence(entropy, tuple(key)), np.random.SeedSequence(entropy, spawn_key=key)
    for n, dtype in ((1, np.uint32), (9, np.uint32), (3, np.uint64)):
        got, want = ours.generate_state(n, dtype), numpys.generate_state(n, dtype)
        assert got.dtype == want.dtype and got.tolist() == want.tolist()
    ours.spawn(spawned), numpys.spawn(spawned)
    for a, b in zip(ours.spawn(2), numpys.spawn(2)):
        assert a.spawn_key == b.spawn_key and a.generate_state(4).tolist() == b.generate_state(4).tolist()
    for state, child in zip(ours.spawn_states(2), numpys.spawn(2)):  # the states of children used once
        assert bytes(state) == seeding._sfc64_words(child)
    assert ours.n_children_spawned == numpys.n_children_spawned


def test_file_seed_and_streams_match_numpy_seed_sequence(monkeypatch):
    """The per-file seed, its generator and its spawned escape streams, with and without the compiled mixing."""
    cases = [(0, b"a.png", 0), (2024, "d/\u00e9t\u00e9.wav".encode(), 3), (2**100 + 5, b"", 1)]
    expected = []
    for master, rel, copy in cases:
        key = seeding._words(__import__("hashlib").sha256(rel).digest()) + (copy,)
        words = np.random.SeedSequence(master, spawn_key=key).generate_state(4)
        seed = sum(int(w) << (32 * i) for i, w in enumerate(words))
        rng = np.random.Generator(np.random.SFC64(seed))
        expected.append((seed, rng.bit_generator.random_raw(3).tolist(),
                         [g.bit_generator.random_raw(2).tolist() for g in rng.spawn(2)]))
    for compiled in (True, False):
        monkeypatch.setattr(seeding, "_seed_check", [compiled])
        for (master, rel, copy), (seed, raw, children) in zip(cases, expected):
            assert seeding.file_seed(master, rel, copy) == seed
            rng = seeding.generator(seed)
            assert rng.bit_generator.random_raw(3).tolist() == raw
            assert [g.bit_generator.random_raw(2).tolist() for g in rng.spawn(2)] == children
