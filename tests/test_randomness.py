"""Counter-based per-sample noise (``randomness.counter_randn``) and the Brownian tree built on it.

References that do not come from this code: SplitMix64's published outputs for seed 1234567
(Vigna's splitmix64.c, as listed on Rosetta Code "Pseudo-random numbers/Splitmix64"), a pure-Python
re-implementation of the documented hash with unbounded ints, N(0, 1) and Brownian-motion laws
(moments, KS, covariance of increments, the Brownian-bridge law). Statistical bounds are derived
from n (e.g. |corr| < 5 / sqrt(n)); every test draws with fixed seeds, so it is deterministic, and
each checks that it has the power to fail.
"""

import math

import pytest
import torch
from scipy import stats

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion import noise as noise_module
from sde_diffusion import randomness
from sde_diffusion.noise import BrownianNoise, GaussianNoise, make_noise
from sde_diffusion.randomness import (Stream, _hash_bits, _mix, _sample_keys, _step_words, check_seed,
                                      counter_randn, draw_x_T, per_sample_generators, seed_tensor)
from sde_diffusion.sampling import sample
from sde_diffusion.sde import VPSDE

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
U64 = 1 << 64
G, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


# ---- the hash against independent references ---------------------------------------------------
def _ref_mix(z):
    z ^= z >> 30
    z = z * M1 % U64
    z ^= z >> 27
    z = z * M2 % U64
    return z ^ (z >> 31)


def _ref_normal(seed, stream, step, j):
    """The documented construction with Python ints and math (no torch)."""
    key = _ref_mix(_ref_mix((seed + G) % U64) ^ (stream * 2**48 + step))
    h = _ref_mix((key + (j // 2 + 1) * G) % U64)
    hi, lo = h >> 32, h & 0xFFFFFFFF
    hi = hi - (1 << 32) if hi >= 1 << 31 else hi  # the high word read as signed
    r = math.sqrt(-2.0 * (math.log(hi + 2.0**31 + 0.5) - 32 * math.log(2.0)))
    theta = lo * (2.0 * math.pi * 2.0**-32)
    return r * math.cos(theta) if j % 2 == 0 else r * math.sin(theta)


def _signed(u):
    return u - U64 if u >= 1 << 63 else u


def test_mix_reproduces_splitmix64_published_outputs():
    states = torch.tensor([_signed((1234567 + (i + 1) * G) % U64) for i in range(5)], dtype=torch.int64)
    got = [v % U64 for v in _mix(states).tolist()]
    assert got == [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                   16408922859458223821]


def test_hash_bits_match_a_python_reference():
    seeds = [0, 1, 12345, 2**63 - 1, 2**40 + 7]
    bits = _hash_bits(_sample_keys(seed_tensor(seeds)), _step_words(Stream.BROWNIAN, [0, 3, 2**40]), 5)
    for k, s in enumerate(seeds):
        for i, step in enumerate([0, 3, 2**40]):
            for c in range(5):
                key = _ref_mix(_ref_mix((s + G) % U64) ^ (int(Stream.BROWNIAN) * 2**48 + step))
                assert int(bits[k, i, c]) % U64 == _ref_mix((key + (c + 1) * G) % U64)


def test_normals_match_a_python_reference():
    z = counter_randn([3, 2**62 + 5], (2, 7), Stream.STEP, 11, dtype=torch.float64)
    ref = torch.tensor([[_ref_normal(s, int(Stream.STEP), 11, j) for j in range(7)] for s in (3, 2**62 + 5)],
                       dtype=torch.float64)
    torch.testing.assert_close(z, ref, rtol=1e-14, atol=1e-14)  # libm vs vectorised math: ulps


# ---- seeds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 2**63, 2**64, True, 1.5, "3", None])
def test_check_seed_refuses_out_of_range_and_non_integers(bad):
    with pytest.raises(ValueError, match="seed"):
        check_seed(bad)


def test_check_seed_covers_the_per_sample_seeds():
    assert check_seed(2**63 - 4, 4) == 2**63 - 4
    with pytest.raises(ValueError, match=r"2\*\*63"):
        check_seed(2**63 - 4, 5)


def test_sample_refuses_a_seed_that_used_to_wrap():
    """torch.Generator.manual_seed keeps 64 bits, so 2**64 silently equalled seed 0; and 2**32 is a
    different seed from 0 (it is not reduced modulo 2**32)."""
    m = GaussianMixture([[0.0, 0.0]]).predictor(VPSDE.linear())
    with pytest.raises(ValueError, match="seed"):
        sample(m, shape=(2, 2), seed=2**64, solver="ancestral", steps=2)
    a = sample(m, shape=(2, 2), seed=0, solver="ancestral", steps=2).samples
    b = sample(m, shape=(2, 2), seed=2**32, solver="ancestral", steps=2).samples
    assert not torch.equal(a, b)


# ---- the contract: pure function of (seed, stream, step, element) ----------------------------
def test_a_sample_does_not_depend_on_batch_mates_or_batch_size_bitwise():
    seeds = [5, 9, 1_000_000, 17, 2**50]
    batch = counter_randn(seeds, (5, 3, 4, 5), Stream.STEP, 4)
    for k, s in enumerate(seeds):
        assert torch.equal(batch[k], counter_randn([s], (1, 3, 4, 5), Stream.STEP, 4)[0])
    perm = [3, 0, 4, 1, 2]
    assert torch.equal(counter_randn([seeds[p] for p in perm], (5, 3, 4, 5), Stream.STEP, 4), batch[perm])
    assert torch.equal(counter_randn(10, (6, 8), Stream.X_T)[2:4], counter_randn(12, (2, 8), Stream.X_T))


def test_element_j_does_not_depend_on_the_sample_shape():
    a = counter_randn(3, (2, 10), Stream.STEP, 0).flatten(1)
    b = counter_randn(3, (2, 7), Stream.STEP, 0).flatten(1)
    c = counter_randn(3, (2, 2, 5), Stream.STEP, 0).flatten(1)
    assert torch.equal(a[:, :7], b) and torch.equal(a, c)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_values_do_not_depend_on_how_the_draw_is_chunked(monkeypatch, chunk):
    """The draw runs in cache-sized chunks of rows (sample, step) or, for long rows, of pairs; tiny
    chunks split rows mid-way and must give the default's bits (odd numel: a half-used last pair)."""
    seeds, shape = [3, 2**62, 11], (3, 5, 41)
    ref = {dt: counter_randn(seeds, shape, Stream.STEP, 2, dtype=dt) for dt in (torch.float32, torch.float64)}
    brown = BrownianNoise((3, 7), seeds=seeds, dtype=torch.float64).W(0.3)
    monkeypatch.setattr(randomness, "_CPU_CHUNK", chunk)
    for dt, z in ref.items():
        assert torch.equal(counter_randn(seeds, shape, Stream.STEP, 2, dtype=dt), z)
    assert torch.equal(BrownianNoise((3, 7), seeds=seeds, dtype=torch.float64).W(0.3), brown)


def test_compiled_noise_falls_back_to_the_eager_draw(monkeypatch, caplog):
    """Opt-in compiled draw: where torch.compile fails (no compiler), one warning, then the eager
    path, with the same values."""
    ref = counter_randn(4, (3, 9), Stream.STEP, 1, dtype=torch.float64)

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(randomness, "_COMPILED", {})
    monkeypatch.setattr(randomness.torch, "compile", broken)
    randomness.use_compiled_noise(True)
    try:
        assert torch.equal(counter_randn(4, (3, 9), Stream.STEP, 1, dtype=torch.float64), ref)
        assert not randomness._USE_COMPILED and "compiled noise unavailable" in caplog.text
    finally:
        randomness.use_compiled_noise(False)


@pytest.mark.slow
def test_compiled_noise_is_bitwise_the_eager_draw(monkeypatch):
    """The compiled kernels (``use_compiled_noise``) against the eager draw, float32 and float64
    (float64 shows a one-ulp difference in ~1% of values, e.g. a compiled sqrt or a fused
    multiply-add), with row chunking, odd numel and a Brownian path. Compiles for ~30 s."""
    monkeypatch.setattr(randomness, "_COMPILED_CHUNK", 4096)  # several chunks per draw
    cases = [((4096, 1, 8, 8), 0, 3), ((513, 1001), 2**62, 1), ((7, 5), 11, 2**40), ((1, 1), 5, 0)]
    ref = {(c, dt): counter_randn(c[1], c[0], Stream.STEP, c[2], dtype=dt)
           for c in cases for dt in (torch.float32, torch.float64)}
    brown = BrownianNoise((64, 3, 5), seeds=9, dtype=torch.float64).interval(0.7, 0.3)
    randomness.use_compiled_noise(True)
    try:
        for (c, dt), z in ref.items():
            assert torch.equal(counter_randn(c[1], c[0], Stream.STEP, c[2], dtype=dt), z)
        assert torch.equal(BrownianNoise((64, 3, 5), seeds=9, dtype=torch.float64).interval(0.7, 0.3), brown)
        if not randomness._USE_COMPILED:
            pytest.skip("torch.compile is not available here (the eager fallback was used)")
    finally:
        randomness.use_compiled_noise(False)


def test_dtype_is_a_cast_of_the_float64_values():
    z64 = counter_randn(0, (3, 50), Stream.STEP, 1, dtype=torch.float64)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(counter_randn(0, (3, 50), Stream.STEP, 1, dtype=dt), z64.to(dt))


def test_sample_with_seed_uses_the_named_streams():
    """x_T is Stream.X_T step 0 and the i-th interval noise is Stream.STEP step i, for every solver."""
    seen = {}

    def probe(model, x, ts, *, noise, callback=None):
        seen["x_T"] = x.clone()
        seen["z"] = [noise.interval(float(a), float(b)) for a, b in zip(ts[:-1], ts[1:])]
        seen["fresh"] = noise.fresh()
        return x

    m = GaussianMixture([[0.0, 0.0, 0.0]]).predictor(VPSDE.linear())
    sample(m, shape=(4, 3), seed=7, solver=probe, steps=3)
    assert torch.equal(seen["x_T"], counter_randn(7, (4, 3), Stream.X_T, 0))
    assert torch.equal(seen["x_T"], draw_x_T((4, 3), 7))
    for i, z in enumerate(seen["z"]):
        assert torch.equal(z, counter_randn(7, (4, 3), Stream.STEP, i))
    assert torch.equal(seen["fresh"], counter_randn(7, (4, 3), Stream.CORRECTOR, 0))


def test_generator_arguments_work_as_before():
    """``generator=`` keeps torch's numbers: one generator, or one per sample (batch invariant)."""
    m = GaussianMixture([[0.3, -0.2]], 0.5).predictor(VPSDE.linear())
    x = sample(m, shape=(3, 2), generator=per_sample_generators(4, 3), solver="ancestral", steps=5).samples
    for k in range(3):
        alone = sample(m, shape=(1, 2), generator=per_sample_generators(4 + k, 1), solver="ancestral", steps=5)
        torch.testing.assert_close(x[k:k + 1], alone.samples, rtol=1e-6, atol=1e-6)
    x_T = torch.stack([torch.randn(2, generator=g) for g in per_sample_generators(4, 3)])
    assert torch.equal(draw_x_T((3, 2), generator=per_sample_generators(4, 3)), x_T)
    g1 = sample(m, shape=(3, 2), generator=torch.Generator().manual_seed(1), solver="ancestral", steps=5).samples
    g2 = sample(m, shape=(3, 2), generator=torch.Generator().manual_seed(1), solver="ancestral", steps=5).samples
    assert torch.equal(g1, g2)


# ---- statistics -----------------------------------------------------------------------------
def test_moments_and_ks_of_half_a_million_normals():
    z = counter_randn(11, (500, 1000), Stream.STEP, 2, dtype=torch.float64).flatten()
    n = z.numel()
    m, v = float(z.mean()), float(z.var())
    assert abs(m) < 5 / math.sqrt(n)
    assert abs(v - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)  # Var z^3 = 15
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)  # Var z^4 = 105 - 9
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(z.numpy() + 0.01, "norm").pvalue < 1e-3  # power: a 0.01 shift is seen
    assert float(z.abs().max()) < math.sqrt(-2 * math.log(2.0**-33)) + 1e-9  # Box-Muller bound


def _pooled_corr(a, b):
    """Mean of a * b over all entries of standardised a, b (their correlation; std 1/sqrt(n) if independent)."""
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return float((a * b).mean()), a.numel()


@pytest.mark.parametrize("what", ["samples", "steps", "streams", "elements", "pair-partners-squared",
                                  "shifted-seed-and-step"])
def test_independence(what):
    """Pooled correlations of noise that must be independent, within 5 / sqrt(n)."""
    B, D = 400, 1000
    z = counter_randn(100, (B, D), Stream.STEP, 0, dtype=torch.float64)
    if what == "samples":  # sample k vs k + 1 (adjacent seeds)
        r, n = _pooled_corr(z[:-1], z[1:])
    elif what == "steps":
        r, n = _pooled_corr(z, counter_randn(100, (B, D), Stream.STEP, 1, dtype=torch.float64))
    elif what == "streams":
        r, n = _pooled_corr(z, counter_randn(100, (B, D), Stream.CORRECTOR, 0, dtype=torch.float64))
    elif what == "elements":  # neighbours j, j + 1 (half are Box-Muller partners) and j, j + 2
        r, n = _pooled_corr(z[:, :-1], z[:, 1:])
        r2, _ = _pooled_corr(z[:, :-2], z[:, 2:])
        assert abs(r2) < 5 / math.sqrt(n)
    elif what == "pair-partners-squared":  # r cos, r sin share r: their squares must still be uncorrelated
        r, n = _pooled_corr(z[:, 0::2] ** 2, z[:, 1::2] ** 2)
    else:  # seed s at step 1 vs seed s + 1 at step 0: no structure in how seed and step enter the key
        r, n = _pooled_corr(counter_randn(100, (B, D), Stream.STEP, 1, dtype=torch.float64)[:-1], z[1:])
    assert abs(r) < 5 / math.sqrt(n), (what, r)


def test_independence_test_has_power():
    """The same statistic flags a dependence of 1 % between neighbouring samples."""
    z = counter_randn(100, (400, 1000), Stream.STEP, 0, dtype=torch.float64)
    y = z[1:] + 0.01 * z[:-1] * math.sqrt(2)  # corr(z[k], y[k]) ~ 0.014
    r, n = _pooled_corr(z[:-1], y)
    assert abs(r) > 5 / math.sqrt(n)


def test_no_pair_of_64_samples_is_correlated():
    z = counter_randn(0, (64, 20000), Stream.X_T, dtype=torch.float64)
    c = torch.corrcoef(z)
    off = (c - torch.eye(64, dtype=torch.float64)).abs().max()
    assert float(off) < 5 / math.sqrt(20000)  # 2016 pairs, each |r| > 5 sigma with p ~ 6e-7


# ---- noise sources --------------------------------------------------------------------------
def test_gaussian_noise_counts_interval_and_fresh_calls_separately():
    src = GaussianNoise((3, 4), seeds=20, dtype=torch.float64)
    a, f, b = src.interval(1.0, 0.5), src.fresh(), src.interval(0.5, 0.0)
    assert torch.equal(a, counter_randn(20, (3, 4), Stream.STEP, 0, dtype=torch.float64))
    assert torch.equal(b, counter_randn(20, (3, 4), Stream.STEP, 1, dtype=torch.float64))
    assert torch.equal(f, counter_randn(20, (3, 4), Stream.CORRECTOR, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match="seeds or generator"):
        GaussianNoise((3, 4), torch.Generator(), seeds=0)


def test_brownian_node_weights_give_variance_t_at_dyadic_points():
    """Levy-Ciesielski weights: sum of squared weights = Var W(t) = t at dyadic t (exact identity)."""
    src = BrownianNoise((1, 1), seeds=0, depth=24)
    for t in (0.5, 0.25, 0.375, 0.8125, 1.0, 12345 / 2**20):
        _, w = src.nodes(t)
        assert abs(sum(x * x for x in w) - t) < 1e-15
    _, w = src.nodes(0.3)  # non-dyadic: t minus the linear-interpolation deficit, <= 2**-24 / 4
    assert 0 <= 0.3 - sum(x * x for x in w) <= 2.0**-24 / 4 + 1e-16


def test_brownian_path_is_a_pure_function_of_seed_and_t_bitwise():
    ts = [0.9, 0.3, 0.61, 0.3000001, 0.05]
    a = BrownianNoise((3, 5), seeds=[4, 5, 6], dtype=torch.float64)
    b = BrownianNoise((3, 5), seeds=[4, 5, 6], dtype=torch.float64)
    wa = [a.W(t) for t in ts]
    wb = [b.W(t) for t in reversed(ts)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    alone = BrownianNoise((1, 5), seeds=[5], dtype=torch.float64)  # batch invariance
    assert all(torch.equal(alone.W(t)[0], w[1]) for t, w in zip(ts, wa))


def test_brownian_marginal_variance_and_increment_independence():
    n = 40000  # independent paths: every element of one sample is its own path
    src = BrownianNoise((1, n), seeds=[3], dtype=torch.float64)
    ts = [1.0, 0.7123, 0.3, 0.2999, 0.0]
    W = {t: src.W(t).flatten() for t in ts}
    for t in ts[:-1]:
        assert abs(float(W[t].var()) - t) < 5 * t * math.sqrt(2 / n)
    incs = [(W[a] - W[b]) / math.sqrt(a - b) for a, b in zip(ts[:-1], ts[1:])]
    for z in incs:
        assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    for i in range(len(incs)):
        for j in range(i + 1, len(incs)):
            assert abs(float((incs[i] * incs[j]).mean())) < 5 / math.sqrt(n)


def test_brownian_bridge_law():
    """Given W(a) and W(b), W(m) - interpolation is N(0, (m - a)(b - m)/(b - a)) and uncorrelated with
    W(a), W(b) (the bridge); checked at a non-dyadic triple."""
    n = 40000
    src = BrownianNoise((1, n), seeds=[8], dtype=torch.float64)
    a, m, b = 0.21, 0.47, 0.83
    wa, wm, wb = (src.W(t).flatten() for t in (a, m, b))
    resid = wm - (wa + (m - a) / (b - a) * (wb - wa))
    v = (m - a) * (b - m) / (b - a)
    assert abs(float(resid.var()) - v) < 5 * v * math.sqrt(2 / n)
    for other in (wa, wb - wa):
        r, k = _pooled_corr(resid, other)
        assert abs(r) < 5 / math.sqrt(k)


def test_brownian_fresh_and_make_noise():
    src = make_noise("brownian", (2, 3), seeds=9, dtype=torch.float64)
    assert torch.equal(src.fresh(), counter_randn(9, (2, 3), Stream.CORRECTOR, 0, dtype=torch.float64))
    assert torch.equal(src.seeds, torch.tensor([9, 10]))
    with pytest.raises(ValueError, match="depth"):
        BrownianNoise((2, 3), seeds=0, depth=0)


def test_brownian_cache_is_bounded_by_bytes_and_never_changes_a_value(monkeypatch):
    """Memory: the W(t) and node caches hold at most max(cache_bytes, one W(t)) bytes, whatever the
    batch/sample size (a count bound would grow with both). Speed: with room, consecutive queries
    reuse the shared top nodes (fewer draws). Values: bitwise the same for every budget."""
    shape, grid = (16, 3, 8, 8), [1.0 - i / 20 for i in range(21)]
    entry = 16 * 3 * 8 * 8 * 8  # bytes of one float64 W(t) or node
    draws, results = {}, {}
    real = noise_module._normals

    def counting(*a, **k):
        draws[budget] += 1
        return real(*a, **k)

    monkeypatch.setattr(noise_module, "_normals", counting)
    for budget in (0, 3 * entry, 10**9):
        draws[budget] = 0
        src = BrownianNoise(shape, seeds=4, dtype=torch.float64, cache_bytes=budget)
        incs = []
        for a, b in zip(grid[:-1], grid[1:]):
            incs.append(src.interval(a, b))
            assert src.cached_bytes() <= max(budget, entry)
        results[budget] = torch.stack(incs)
    assert torch.equal(results[0], results[3 * entry]) and torch.equal(results[0], results[10**9])
    probe = BrownianNoise((1, 1), seeds=0)
    assert draws[0] == sum(len(probe.nodes(t)[0]) for t in grid)  # each W(t) once, no node reuse
    assert draws[10**9] < draws[3 * entry] < draws[0]
    with pytest.raises(ValueError, match="cache_bytes"):
        BrownianNoise(shape, seeds=0, cache_bytes=-1)


# ---- CUDA (skipped without a GPU) -------------------------------------------------------------
@CUDA
def test_hash_bits_bitwise_equal_on_cuda():
    keys = _sample_keys(seed_tensor(123, 257))
    words = _step_words(Stream.STEP, [0, 1, 2**40])
    cpu = _hash_bits(keys, words, 333)
    gpu = _hash_bits(keys.cuda(), words.cuda(), 333)
    assert torch.equal(cpu, gpu.cpu())


@CUDA
def test_noise_on_cuda_equals_cpu():
    """float64 normals to an ulp or two (only log comes from the device libm); float32 bitwise except
    where a value sits within ~1e-16 of a float32 rounding boundary."""
    shape = (512, 3, 16, 16)
    c64 = counter_randn(0, shape, Stream.STEP, 5, dtype=torch.float64)
    g64 = counter_randn(0, shape, Stream.STEP, 5, dtype=torch.float64, device="cuda").cpu()
    torch.testing.assert_close(g64, c64, rtol=1e-15, atol=1e-15)  # log may differ by an ulp
    mismatch = (counter_randn(0, shape, Stream.STEP, 5, device="cuda").cpu() != c64.float()).sum()
    assert int(mismatch) <= 2, f"{int(mismatch)} of {c64.numel()} float32 values differ"


@CUDA
def test_brownian_and_sample_on_cuda_match_cpu():
    src_c = BrownianNoise((4, 50), seeds=1, dtype=torch.float64)
    src_g = BrownianNoise((4, 50), seeds=1, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(src_g.interval(0.9, 0.4).cpu(), src_c.interval(0.9, 0.4), rtol=1e-13, atol=1e-13)
    g = GaussianMixture([[0.5, -0.5]], 0.5)
    sde = VPSDE.linear()
    for solver in ("ancestral", "dpmpp_2m_sde", "euler_maruyama"):
        cpu = sample(g.predictor(sde), shape=(64, 2), seed=3, solver=solver, steps=10).samples
        x_T = draw_x_T((64, 2), 3, device="cuda")
        gpu = sample(g.predictor(sde), x_T, seed=3, solver=solver, steps=10).samples
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
