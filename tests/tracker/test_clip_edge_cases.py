"""Edge cases of the clip strategies and the spec grammar found by QA: ZClip/AutoClip statistics stay float32
under a float64 default dtype (exact resume), AutoClip's decision on float64 norms, value clipping of tensors
holding NaN, bounds on window/warm-up, messages for negative random bounds, and what counts as a number or a
seed. Oracles: an uninterrupted run, numpy.percentile, torch.nn.utils.clip_grad_value_, numpy mean/std."""

import io
import math

import numpy as np
import pytest
import torch

from tracker.clipping import AutoClip, ClipSpecError, ZClip, parse_clip

rng = np.random.default_rng(3)
NORMS = [float(x) for x in np.abs(2.0 + 0.4 * rng.standard_normal(300))]
for i in (40, 41, 90, 200):
    NORMS[i] *= 15.0

DIRECTION = [torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), torch.randn(3)]


def grads_with_norm(n, dtype=torch.float32):
    """Two gradient tensors of ``dtype`` whose global L2 norm is n."""
    unit = math.sqrt(sum(float((d.double() ** 2).sum()) for d in DIRECTION))
    return [d.to(dtype) * (n / unit) for d in DIRECTION]


def step(strategy, n, t, dtype=torch.float32):
    grads = grads_with_norm(n, dtype)
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(norms)
    before = [g.clone() for g in grads]
    return strategy.clip_(grads, norms, total, step=t), grads, before, total


def resumed(strategy, state):
    """A fresh strategy of the same spec with ``state`` loaded through torch.save / torch.load."""
    buf = io.BytesIO()
    torch.save(state, buf)
    other = parse_clip(strategy.spec)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    return other


def assert_same_continuation(a, b, norms, start, dtype=torch.float32):
    for t, n in enumerate(norms, start=start):
        ra, ga, _, _ = step(a, n, t, dtype)
        rb, gb, _, _ = step(b, n, t, dtype)
        for field in ("threshold", "coef", "total_norm_after", "clipped", "n_clipped"):
            torch.testing.assert_close(
                getattr(ra, field), getattr(rb, field), equal_nan=True, rtol=0, atol=0, msg=f"{field} {t}"
            )
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.fixture
def default_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# statistics under a float64 default dtype -------------------------------------------------------------------


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stop_at", [4, 10, 30])
def test_zclip_resumes_exactly_under_a_float64_default_dtype(default_float64, grad_dtype, stop_at):
    a = parse_clip("zclip:2,alpha=0.9,warmup=10")
    for t, n in enumerate(NORMS[:stop_at]):
        step(a, n, t, grad_dtype)
    b = resumed(a, a.state_dict())
    assert_same_continuation(a, b, NORMS[stop_at : stop_at + 40], stop_at, grad_dtype)
    assert a.mean.dtype == a.var.dtype == torch.float32  # docs: ZClip's statistics are float32


@pytest.mark.parametrize("window", [None, 6, 100])
def test_autoclip_history_is_float32_under_a_float64_default_dtype(default_float64, window):
    a = AutoClip(30, window)
    for t, n in enumerate(NORMS[:80]):
        step(a, n, t, torch.float64)
    assert a.history().dtype == torch.float32
    b = resumed(a, a.state_dict())
    assert_same_continuation(a, b, NORMS[80:150], 80, torch.float64)


def test_statistics_do_not_depend_on_the_default_dtype(default_float64):
    runs = {}
    for default in (torch.float32, torch.float64):
        torch.set_default_dtype(default)
        strategies = [parse_clip("zclip:2,warmup=7"), parse_clip("autoclip:25,window=9")]
        runs[default] = [
            [float(step(s, n, t, torch.float64)[0].threshold) for t, n in enumerate(NORMS[:60])]
            for s in strategies
        ]
    np.testing.assert_array_equal(runs[torch.float32], runs[torch.float64])


# AutoClip's decision on float64 norms -----------------------------------------------------------------------


def float64_norms(count, seed):
    """Global norms whose float32 rounding differs from them (the case of float64 gradients)."""
    return [float(x) for x in np.abs(1.0 + np.random.default_rng(seed).standard_normal(count)) + 0.1]


@pytest.mark.parametrize("spec", ["autoclip:100", "autoclip:50,window=1", "autoclip:100,window=7"])
def test_autoclip_on_float64_gradients_never_clips_a_norm_at_its_own_percentile(spec):
    strategy = parse_clip(spec)
    for t, n in enumerate(float64_norms(300, 0)):
        r, grads, before, total = step(strategy, n, t, torch.float64)
        assert not bool(r.clipped) and int(r.n_clipped) == 0, t
        assert float(r.coef) == 1.0 and float(r.total_norm_after) == float(total), t
        for g, b in zip(grads, before, strict=True):
            torch.testing.assert_close(g, b, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 10, 50, 100])
def test_autoclip_step_zero_never_clips_float64_gradients(p):
    for seed, n in enumerate(float64_norms(60, 1)):
        r, _, _, _ = step(AutoClip(p), n, 0, torch.float64)
        assert not bool(r.clipped) and float(r.coef) == 1.0, seed


@pytest.mark.parametrize("p, window", [(10, None), (50, 20), (90, 5)])
def test_autoclip_float64_decision_follows_the_float32_history(p, window):
    """numpy.percentile of the float32-rounded history is the oracle for the decision; the coefficient is
    still threshold / (N + 1e-6) with the float64 norm, as clip_grad_norm_ computes it."""
    strategy = AutoClip(p, window)
    history = []
    n_clipped = 0
    for t, n in enumerate(float64_norms(200, 2)):
        r, grads, before, total = step(strategy, n, t, torch.float64)
        history.append(float(np.float32(float(total))))
        kept = history if window is None else history[-window:]
        threshold = float(np.float32(np.percentile(np.array(kept, dtype=np.float64), p)))
        assert float(r.threshold) == pytest.approx(threshold, rel=1e-6), t
        expected = history[-1] > float(r.threshold)
        assert bool(r.clipped) == expected, t
        if expected:
            n_clipped += 1
            assert float(r.coef) == pytest.approx(float(r.threshold) / (float(total) + 1e-6), rel=1e-12)
            for g, b in zip(grads, before, strict=True):
                torch.testing.assert_close(g, b * r.coef, rtol=1e-15, atol=0)
    assert n_clipped > 10


def test_autoclip_still_clips_a_float64_norm_beyond_the_float32_range():
    strategy = AutoClip(10)
    for t, n in enumerate([1.0, 1.5, 2.0, 1.2]):
        step(strategy, n, t, torch.float64)
    r, grads, _, total = step(strategy, 1e100, 4, torch.float64)
    assert math.isfinite(float(total)) and float(total) > 3.5e38
    assert bool(r.clipped) and math.isfinite(float(torch.nn.utils.get_total_norm(grads)))


def test_zclip_decides_on_the_statistic_of_float64_norms():
    """ZClip compares the float32 statistic with float32 statistics: a constant float64 norm (z = 0) never
    triggers, whatever its float32 rounding."""
    strategy = parse_clip("zclip:0.001,warmup=3")
    n = float(np.nextafter(np.float32(1.7), np.float32(2.0))) + 1e-9  # between two float32 values
    for t in range(50):
        r, _, _, _ = step(strategy, n, t, torch.float64)
        assert not bool(r.clipped) and float(r.coef) == 1.0, t


# value clipping next to NaN ---------------------------------------------------------------------------------


def value_clip(grads, c):
    """(result, our gradients, clip_grad_value_'s gradients)."""
    ours = [g.clone() for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(theirs, grads, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_value_(theirs, c)
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    result = parse_clip(f"value:{c}").clip_(ours, norms, torch.linalg.vector_norm(norms))
    return result, ours, [p.grad for p in theirs]


NAN, INF = math.nan, math.inf
VALUE_CASES = [  # (gradients, tensors with an element outside [-C, C]); C = 0.5
    ([[5.0, NAN, 0.1], [0.2, -0.3]], 1),
    ([[NAN, -5.0], [NAN]], 1),
    ([[NAN, 0.1], [0.2, -0.3]], 0),
    ([[NAN, NAN], [-0.5, 0.5]], 0),
    ([[INF, NAN, -INF], [0.1]], 1),
    ([[NAN, 0.1, -2.0], [7.0], [NAN, 0.4]], 2),
    ([[-INF, 0.0], [INF, 0.0]], 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("values, changed", VALUE_CASES)
def test_value_clip_counts_clamped_elements_next_to_nan(values, changed, dtype):
    grads = [torch.tensor(v, dtype=dtype) for v in values]
    result, ours, theirs = value_clip(grads, 0.5)
    for g, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(g, t, equal_nan=True, rtol=0, atol=0)
    assert bool(result.clipped) == (changed > 0)
    assert int(result.n_clipped) == changed


def test_value_clip_counts_infinity_at_the_largest_threshold():
    grads = [torch.tensor([INF, NAN, 1.0])]
    result, ours, theirs = value_clip(grads, 3.4028234663852886e38)
    torch.testing.assert_close(ours[0], theirs[0], equal_nan=True, rtol=0, atol=0)
    assert bool(result.clipped) and int(result.n_clipped) == 1


def test_value_clip_with_nan_makes_no_host_conversion(monkeypatch):
    grads = [torch.tensor([5.0, NAN, 0.1]), torch.tensor([0.2])]
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(norms)
    strategy = parse_clip("value:0.5")

    def refuse(self, *args, **kwargs):
        raise AssertionError("host sync inside clip_")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            m.setattr(torch.Tensor, name, refuse)
        result = strategy.clip_(grads, norms, total)
    assert bool(result.clipped) and int(result.n_clipped) == 1


# bounds on window and warm-up -------------------------------------------------------------------------------

LIMIT = 10_000_000


@pytest.mark.parametrize(
    "spec, what",
    [
        ("autoclip:10,window=1e12", "autoclip window"),
        ("autoclip:10,window=10000001", "autoclip window"),
        ("zclip:2.5,warmup=1e12", "zclip warmup"),
        ("zclip,warmup=10000001", "zclip warmup"),
        ("autoclip,window=100000000000000000000000000", "autoclip window"),
    ],
)
def test_a_window_or_warmup_past_the_limit_is_refused_up_front(spec, what):
    with pytest.raises(ClipSpecError) as info:
        parse_clip(spec)
    message = str(info.value)
    assert what in message and "10000000" in message and "steps" in message


def test_constructors_refuse_a_window_or_warmup_past_the_limit():
    with pytest.raises(ClipSpecError, match="10000000"):
        AutoClip(10, window=LIMIT + 1)
    with pytest.raises(ClipSpecError, match="10000000"):
        ZClip(warmup=10**12)


def test_the_limit_itself_runs_without_allocating_it():
    """A window or warm-up of the limit costs memory for the norms seen, not for the whole window: a run of
    a few steps behaves (and is stored) as one without a window."""
    long, unbounded = parse_clip(f"autoclip:10,window={LIMIT}"), AutoClip(10)
    for t, n in enumerate(NORMS[:100]):
        r_long, _, _, _ = step(long, n, t)
        r_free, _, _, _ = step(unbounded, n, t)
        assert float(r_long.threshold) == float(r_free.threshold), t
    torch.testing.assert_close(long.state_dict()["history"], unbounded.state_dict()["history"])
    z = parse_clip(f"zclip,warmup={LIMIT}")
    for t, n in enumerate(NORMS[:100]):
        assert math.isnan(float(step(z, n, t)[0].threshold))
    assert z.state_dict()["buffer"].numel() == 100
    for s in (long, z):  # what is kept grows with the steps seen, not with the window
        kept = s._history if s is long else s._buffer
        assert kept.numel() <= 256


@pytest.mark.parametrize("p, window", [(10, 100), (50, 65), (90, 130), (100, 200)])
def test_autoclip_windows_longer_than_the_first_allocation(p, window):
    strategy = AutoClip(p, window)
    history = []
    for t, n in enumerate(NORMS):
        r, _, _, total = step(strategy, n, t)
        history.append(float(total))
        expected = float(np.percentile(history[-window:], p))
        assert float(r.threshold) == pytest.approx(expected, rel=1e-6), t


@pytest.mark.parametrize("stop_at", [30, 64, 70, 129, 131, 250])
def test_autoclip_long_window_resumes_exactly(stop_at):
    a = AutoClip(40, 130)
    for t, n in enumerate(NORMS[:stop_at]):
        step(a, n, t)
    assert_same_continuation(a, resumed(a, a.state_dict()), NORMS[stop_at:], stop_at)


@pytest.mark.parametrize("warmup", [65, 200])
def test_zclip_long_warmup_statistics_are_mean_and_population_variance(warmup):
    strategy = ZClip(2.5, 0.97, warmup)
    seen = []
    for t, n in enumerate(NORMS[: warmup + 1]):
        r, _, _, total = step(strategy, n, t)
        seen.append(float(total))
    first = np.array(seen[:warmup])
    expected = first.mean() + 2.5 * first.std()  # the trigger level at the first step after warm-up
    assert float(r.threshold) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stop_at", [30, 64, 65, 100, 120])
def test_zclip_long_warmup_resumes_exactly(stop_at):
    a = ZClip(2.0, 0.9, 100)
    for t, n in enumerate(NORMS[:stop_at]):
        step(a, n, t)
    assert_same_continuation(a, resumed(a, a.state_dict()), NORMS[stop_at : stop_at + 60], stop_at)


# negative random bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("random:-1-2", "random lower bound LO must be a finite number > 0, got -1.0"),
        ("random: -1 - 2", "random lower bound LO must be a finite number > 0, got -1.0"),
        ("random:0.5--2", "random upper bound HI must be a finite number > 0, got -2.0"),
        ("random:-3--2", "random lower bound LO must be a finite number > 0, got -3.0"),
        ("random:-1e-3-2", "random lower bound LO must be a finite number > 0, got -0.001"),
    ],
)
def test_negative_random_bounds_say_they_must_be_positive(spec, fragment):
    with pytest.raises(ClipSpecError) as info:
        parse_clip(spec)
    assert fragment in str(info.value)
    assert "needs a range" not in str(info.value)


@pytest.mark.parametrize("spec", ["random:1", "random:1-", "random:-", "random:a-b", "random:1-2-3"])
def test_malformed_random_ranges_still_ask_for_a_range(spec):
    with pytest.raises(ClipSpecError, match="random needs a range LO-HI"):
        parse_clip(spec)


@pytest.mark.parametrize(
    "spec, canonical", [("random:1e-3-2", "random:0.001-2.0"), ("random:+1-+2", "random:1.0-2.0")]
)
def test_signed_and_scientific_random_bounds(spec, canonical):
    assert parse_clip(spec).spec == canonical


# numbers and seeds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, seed",
    [
        ("random:0.5-2,seed=9007199254740993.0", "9007199254740993.0"),
        ("random:0.5-2,seed=18446744073709551615e0", "18446744073709551615e0"),
        ("random:0.5-2,seed=1e3", "1e3"),
        ("random:0.5-2,seed=7.", "7."),
        ("norm:1+noise(0.01,seed=12345678901234567891.0)", "12345678901234567891.0"),
        ("none+noise(0.1,seed=٥)", "٥"),
        ("random:0.5-2,seed=1_000", "1_000"),
    ],
)
def test_seeds_must_be_plain_integers(spec, seed):
    with pytest.raises(ClipSpecError) as info:
        parse_clip(spec)
    message = str(info.value)
    assert f"seed {seed!r}" in message and "plain integer" in message


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("random:0.5-2,seed=9007199254740993", "random:0.5-2.0,seed=9007199254740993"),
        ("random:0.5-2,seed=+7", "random:0.5-2.0,seed=7"),
        ("none+noise(0.3,seed=18446744073709551617)", "none+noise(0.3,0.55,seed=18446744073709551617)"),
    ],
)
def test_plain_integer_seeds_are_read_exactly(spec, canonical):
    assert parse_clip(spec).spec == canonical


def test_a_negative_seed_is_refused_by_its_range():
    with pytest.raises(ClipSpecError, match="seed must be an integer >= 0, got -1"):
        parse_clip("random:0.5-2,seed=-1")


@pytest.mark.parametrize(
    "spec",
    [
        "norm:١٢",  # Arabic-Indic digits
        "value:１",  # fullwidth digit
        "layer:0.５",
        "norm:1e٣",
        "agc:٠.01",
        "autoclip:١٠",
        "autoclip:10,window=٥",
        "zclip:2,warmup=٥",
        "zclip:2,alpha=٠.9",
        "random:١-2",
        "random:1-٢",
        "norm:linear(5,1,١٠)",
        "norm:1+noise(٠.1)",
    ],
)
def test_only_ascii_digits_are_numbers(spec):
    with pytest.raises(ClipSpecError, match="is not a number|needs a range"):
        parse_clip(spec)


def test_counts_may_still_be_written_as_integral_numbers():
    assert parse_clip("autoclip:10,window=1e3").spec == "autoclip:10.0,window=1000"
    assert parse_clip("zclip,warmup=10.0").spec == "zclip:2.5,alpha=0.97,warmup=10"
