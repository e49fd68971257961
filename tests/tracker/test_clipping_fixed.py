"""none / value / norm / layer / random and the threshold schedules, against torch's own clipping functions
run on a copy of the same gradients, or against the formula written out here."""

import math
import random
import sqlite3

import numpy as np
import pytest
import torch

from tracker import GradTracker
from tracker.clipping import LayerClip, NormClip, Schedule, parse_clip

SHAPES = [(8, 5), (8,), (4, 3, 3, 3), (1, 7), ()]


def make_params(scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=g, dtype=dtype) * scale * (i + 1)
    return params


def clone(params):
    """An independent copy for the oracle (deepcopy does not copy .grad)."""
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


def measure(grads):
    """The oracle's measurement: torch's own per-tensor norms and total (not tracker.norms)."""
    norms = torch.stack([torch.linalg.vector_norm(g).float() for g in grads])
    return norms, torch.nn.utils.get_total_norm(grads).float()


def run(spec, params, step=0):
    strategy = parse_clip(spec) if isinstance(spec, str) else spec
    grads = [p.grad for p in params]
    norms, total = measure(grads)
    return strategy.clip_(grads, norms, total, params=params, step=step), norms, total


def as_float(t):
    return float(t)


def test_none_changes_nothing():
    params = make_params(scale=100.0)
    before = [p.grad.clone() for p in params]
    r, _, total = run("none", params)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.grad, b)
    assert math.isnan(as_float(r.threshold))
    assert as_float(r.coef) == 1.0 and not bool(r.clipped) and int(r.n_clipped) == 0
    assert as_float(r.total_norm_after) == as_float(total)


@pytest.mark.parametrize("c, scale", [(0.05, 1.0), (3.0, 0.1), (1.0, 1.0)])
def test_value_matches_clip_grad_value(c, scale):
    params = make_params(scale=scale)
    oracle = clone(params)
    torch.nn.utils.clip_grad_value_(oracle, c)
    r, norms, total = run(f"value:{c}", params)
    for p, o in zip(params, oracle, strict=True):
        assert torch.equal(p.grad, o.grad)
    after = torch.nn.utils.get_total_norm([o.grad for o in oracle])
    assert as_float(r.total_norm_after) == pytest.approx(as_float(after), rel=1e-6)
    assert as_float(r.coef) == pytest.approx(as_float(after) / as_float(total), rel=1e-6)
    changed = sum(bool((p.grad.abs() > c).any()) for p in clone(make_params(scale=scale)))
    assert int(r.n_clipped) == changed and bool(r.clipped) == (changed > 0)
    assert as_float(r.threshold) == pytest.approx(c)


@pytest.mark.parametrize("c, scale", [(1.0, 1.0), (1000.0, 1.0), (0.01, 0.001), (2.5, 3.0)])
def test_norm_matches_clip_grad_norm(c, scale):
    params = make_params(scale=scale)
    oracle = clone(params)
    expected_total = torch.nn.utils.clip_grad_norm_(oracle, c)
    r, _, total = run(f"norm:{c}", params)
    for p, o in zip(params, oracle, strict=True):
        torch.testing.assert_close(p.grad, o.grad, rtol=1e-6, atol=0)
    n = as_float(expected_total)
    coef = min(1.0, c / (n + 1e-6)) if n > c else 1.0
    assert as_float(r.coef) == pytest.approx(coef, rel=1e-6)
    assert bool(r.clipped) == (n > c)
    assert int(r.n_clipped) == (len(params) if n > c else 0)
    after = torch.nn.utils.get_total_norm([o.grad for o in oracle])
    assert as_float(r.total_norm_after) == pytest.approx(as_float(after), rel=1e-5)
    assert as_float(r.threshold) == pytest.approx(c)


@pytest.mark.parametrize("p", [1.0, 3.0, float("inf")])
def test_norm_type_matches_clip_grad_norm(p):
    params = make_params(scale=2.0)
    oracle = clone(params)
    torch.nn.utils.clip_grad_norm_(oracle, 0.5, norm_type=p)
    r, _, total = run(NormClip(0.5, norm_type=p), params)
    for a, o in zip(params, oracle, strict=True):
        torch.testing.assert_close(a.grad, o.grad, rtol=1e-5, atol=1e-7)
    # The L2 norm after is reported, whatever norm decided the coefficient.
    l2_after = torch.nn.utils.get_total_norm([o.grad for o in oracle])
    assert as_float(r.total_norm_after) == pytest.approx(as_float(l2_after), rel=1e-5)


def test_layer_matches_clip_grad_norm_per_tensor():
    params = make_params(scale=1.0)
    oracle = clone(params)
    c = 5.4  # between the tensors' norms (3.3 .. 34.9): some are clipped, some not
    for o in oracle:
        torch.nn.utils.clip_grad_norm_([o], c)
    r, norms, _ = run(f"layer:{c}", params)
    for p, o in zip(params, oracle, strict=True):
        torch.testing.assert_close(p.grad, o.grad, rtol=1e-6, atol=0)
    over = [float(n) for n in norms if float(n) > c]
    assert int(r.n_clipped) == len(over) and 0 < len(over) < len(params)
    assert as_float(r.coef) == pytest.approx(c / (max(over) + 1e-6), rel=1e-6)
    after = torch.nn.utils.get_total_norm([o.grad for o in oracle])
    assert as_float(r.total_norm_after) == pytest.approx(as_float(after), rel=1e-5)


def test_random_threshold_is_seeded_uniform_and_clips_like_norm():
    strategy = parse_clip("random:0.5-2,seed=3")
    draws = [strategy.threshold_at(t) for t in range(2000)]
    assert all(0.5 <= d <= 2.0 for d in draws)
    assert sum(draws) / len(draws) == pytest.approx(1.25, abs=0.03)  # mean of U[0.5, 2]
    assert draws == [parse_clip("random:0.5-2,seed=3").threshold_at(t) for t in range(2000)]
    assert draws[:50] != [parse_clip("random:0.5-2,seed=4").threshold_at(t) for t in range(50)]
    # The draw is the documented pure function of (seed, step).
    assert draws[17] == 0.5 + 1.5 * random.Random(3 * 1_000_003 + 17).random()
    params = make_params(scale=1.0)
    oracle = clone(params)
    torch.nn.utils.clip_grad_norm_(oracle, draws[17])
    r, _, _ = run(strategy, params, step=17)
    assert as_float(r.threshold) == pytest.approx(draws[17])
    for p, o in zip(params, oracle, strict=True):
        torch.testing.assert_close(p.grad, o.grad, rtol=1e-6, atol=0)


SCHEDULE_CASES = [
    ("linear(5,1,100)", lambda t: 5 + (1 - 5) * min(t, 100) / 100),
    ("cosine(5,1,100)", lambda t: 1 + (5 - 1) * (1 + math.cos(math.pi * min(t, 100) / 100)) / 2),
    ("step(2,0.5,30)", lambda t: 2 * 0.5 ** (t // 30)),
    ("warmup(3,10)", lambda t: 3 * min(1.0, (t + 1) / 10)),
]


@pytest.mark.parametrize("text, formula", SCHEDULE_CASES)
def test_schedules_follow_their_formulas(text, formula):
    spec = parse_clip(f"norm:{text}")
    for t in [0, 1, 9, 10, 29, 30, 31, 50, 99, 100, 101, 5000]:
        assert spec.threshold.at(t) == pytest.approx(formula(t), rel=1e-12)


def test_schedule_endpoints():
    assert Schedule("linear", (5.0, 1.0, 100.0)).at(0) == 5.0
    assert Schedule("cosine", (5.0, 1.0, 100.0)).at(100) == pytest.approx(1.0)
    assert Schedule("warmup", (3.0, 10.0)).at(0) == pytest.approx(0.3)


def torch_clipped(kind: str, params, threshold: float):
    """Copies of ``params`` clipped by torch's own functions: the oracle of value, norm and layer."""
    oracle = clone(params)
    if kind == "value":
        torch.nn.utils.clip_grad_value_(oracle, threshold)
    elif kind == "norm":
        torch.nn.utils.clip_grad_norm_(oracle, threshold)
    else:
        for o in oracle:
            torch.nn.utils.clip_grad_norm_([o], threshold)
    return oracle


@pytest.mark.parametrize("kind", ["value", "norm", "layer"])
def test_scheduled_threshold_is_used_at_each_step(kind):
    strategy = parse_clip(f"{kind}:linear(2,0.2,10)")
    for step in (0, 5, 10, 20):
        c = 2 + (0.2 - 2) * min(step, 10) / 10
        params = make_params(scale=1.0, seed=step)
        oracle = torch_clipped(kind, params, c)
        r, _, _ = run(strategy, params, step=step)
        assert as_float(r.threshold) == pytest.approx(c, rel=1e-6)
        for p, o in zip(params, oracle, strict=True):
            torch.testing.assert_close(p.grad, o.grad, rtol=1e-6, atol=0)


FLOAT32_MAX = torch.finfo(torch.float32).max


@pytest.mark.parametrize("kind", ["value", "norm", "layer"])
def test_a_schedule_growing_past_the_float32_range_stops_there(kind):
    # step(1,2,1) is 2**t: above FLOAT32_MAX from t = 128 on, and too large for a Python float (OverflowError)
    # from t = 1024 on. Either used to crash the step; now the threshold stays at FLOAT32_MAX: no finite
    # gradient is beyond it, so nothing is clipped, exactly as torch does with that max_norm / clip_value.
    strategy = parse_clip(f"{kind}:step(1,2,1)")
    for step in [127, 128, 129, 1023, 1024, 1025, 10**9]:
        params = make_params(scale=1e3, seed=step % 1000)
        before = [p.grad.clone() for p in params]
        unclipped = clone(params)
        r, norms, total = run(strategy, params, step=step)
        threshold = as_float(r.threshold)
        assert threshold == (2.0**step if step < 128 else FLOAT32_MAX), step
        assert math.isfinite(threshold)
        oracle = torch_clipped(kind, unclipped, threshold)
        for p, o, b in zip(params, oracle, before, strict=True):
            assert torch.equal(p.grad, b) and torch.equal(p.grad, o.grad)
        assert not bool(r.clipped) and int(r.n_clipped) == 0
        # (value's coef is its norm after over the norm before: a new read, equal up to rounding)
        assert as_float(r.coef) == pytest.approx(1.0, rel=1e-6)
        assert as_float(r.total_norm_after) == pytest.approx(as_float(total), rel=1e-6)


FLOAT32_TINY = torch.finfo(torch.float32).tiny


@pytest.mark.parametrize("kind", ["value", "norm", "layer"])
def test_a_schedule_decaying_past_the_float32_range_stops_there(kind):
    # step(1,0.5,1) is 2**-t: below the smallest normal float32 from t = 127 on, 0 in float32 from t = 150
    # on. It used to clip with a threshold of 0, wiping the gradients; it now stays at FLOAT32_TINY, and
    # clips exactly as torch does with that max_norm / clip_value.
    strategy = parse_clip(f"{kind}:step(1,0.5,1)")
    for step in [100, 126, 127, 150, 10**6]:
        params = make_params(scale=1e-3, seed=step % 1000)
        unclipped = clone(params)
        r, _, _ = run(strategy, params, step=step)
        threshold = as_float(r.threshold)
        assert threshold == (2.0**-step if step < 127 else FLOAT32_TINY), step
        oracle = torch_clipped(kind, unclipped, threshold)
        for p, o in zip(params, oracle, strict=True):
            torch.testing.assert_close(p.grad, o.grad, rtol=1e-6, atol=0)
            assert p.grad.abs().sum() > 0, step  # clipped hard, but not to nothing


def test_a_growing_schedule_through_the_tracker_records_a_finite_threshold(db_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    with GradTracker(model, db=db_path, run="grow", clip="norm:step(1,2,1)", every=50) as tracker:
        for t in range(131):  # past t = 128, where 2**t leaves the float32 range
            model(torch.randn(4, 2)).sum().backward()
            grads = [p.grad.clone() for p in model.parameters()]
            stats = tracker.step()
            if t >= 128:  # (the first steps' thresholds 1, 2, 4... may clip)
                assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
            model.zero_grad()
    assert float(stats.threshold) == FLOAT32_MAX
    with sqlite3.connect(db_path) as conn:
        thresholds = [t for (t,) in conn.execute("SELECT threshold FROM clip_events ORDER BY step")]
    # (the store keeps the shortest decimal of the float32 value: 3.4028235e+38 for FLOAT32_MAX)
    assert len(thresholds) == 131 and all(math.isfinite(t) for t in thresholds)
    assert thresholds == pytest.approx([2.0**t for t in range(128)] + [FLOAT32_MAX] * 3, rel=1e-7)


def test_mixed_dtypes_are_clipped_like_torch():
    params = make_params(scale=3.0)[:3]
    params[1].data, params[1].grad = params[1].data.double(), params[1].grad.double()
    params[2].data, params[2].grad = params[2].data.bfloat16(), params[2].grad.bfloat16()
    oracle = clone(params)
    torch.nn.utils.clip_grad_norm_(oracle, 1.0)
    run("norm:1.0", params)
    for p, o in zip(params, oracle, strict=True):
        assert p.grad.dtype == o.grad.dtype
        torch.testing.assert_close(p.grad, o.grad)


@pytest.mark.parametrize("spec", ["norm:1.0", "random:0.5-1", "layer:1.0", "value:0.5"])
def test_empty_gradient_list(spec):
    total = torch.zeros(())
    r = parse_clip(spec).clip_([], torch.zeros(0), total, params=[], step=0)
    assert not bool(r.clipped) and int(r.n_clipped) == 0 and as_float(r.coef) == 1.0


def test_zero_gradients_stay_zero():
    params = make_params()
    for p in params:
        p.grad.zero_()
    for spec in ["norm:1", "layer:1", "value:1", "agc:0.01", "autoclip:10", "random:1-2"]:
        r, _, _ = run(spec, params)
        assert all(torch.count_nonzero(p.grad) == 0 for p in params)
        assert not bool(r.clipped) or spec.startswith("autoclip")
        assert as_float(r.coef) == 1.0 or spec.startswith("autoclip")


class TestNonFinite:
    """A non-finite norm leaves the gradients as they were (torch's clip_grad_norm_ would multiply every
    gradient, the finite ones included, by a 0 or NaN coefficient); value clipping stays elementwise."""

    def poisoned(self, bad):
        params = make_params(scale=5.0)
        params[2].grad[0, 0, 0, 0] = bad
        return params

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    @pytest.mark.parametrize("spec", ["norm:1", "random:0.1-0.2", "autoclip:10", "zclip:2,warmup=1"])
    def test_global_strategies_leave_gradients_untouched(self, spec, bad):
        params = self.poisoned(bad)
        before = [p.grad.clone() for p in params]
        r, _, _ = run(spec, params)
        for p, b in zip(params, before, strict=True):
            torch.testing.assert_close(p.grad, b, equal_nan=True, rtol=0, atol=0)
        assert as_float(r.coef) == 1.0 and not bool(r.clipped) and int(r.n_clipped) == 0

    def test_torch_would_have_poisoned_the_finite_gradients(self):
        # Why we deviate: the documented behaviour of clip_grad_norm_(error_if_nonfinite=False).
        params = self.poisoned(float("inf"))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert torch.count_nonzero(params[0].grad) == 0  # coef 0: the finite gradients are wiped
        params = self.poisoned(float("nan"))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert torch.isnan(params[0].grad).all()  # coef NaN: they become NaN

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_layer_clips_only_the_finite_tensors(self, bad):
        params = self.poisoned(bad)
        oracle = clone(params)
        for i, o in enumerate(oracle):
            if i != 2:
                torch.nn.utils.clip_grad_norm_([o], 1.0)
        r, _, _ = run("layer:1", params)
        for p, o in zip(params, oracle, strict=True):
            torch.testing.assert_close(p.grad, o.grad, equal_nan=True, rtol=1e-6, atol=0)
        assert math.isfinite(as_float(r.coef))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_value_is_elementwise_like_torch(self, bad):
        params = self.poisoned(bad)
        oracle = clone(params)
        torch.nn.utils.clip_grad_value_(oracle, 0.5)
        r, _, _ = run("value:0.5", params)
        for p, o in zip(params, oracle, strict=True):
            torch.testing.assert_close(p.grad, o.grad, equal_nan=True, rtol=0, atol=0)
        assert math.isfinite(as_float(r.coef)) and 0.0 <= as_float(r.coef) <= 1.0

    def test_finite_gradients_never_become_nan(self):
        params = make_params(scale=1e-30)  # tiny but finite norms
        for spec in ["norm:1", "layer:1e-35", "value:2e-38", "agc:0.01", "autoclip:1", "random:1e-35-1e-34"]:
            run(spec, params)
            assert all(torch.isfinite(p.grad).all() for p in params), spec


def test_direct_construction_equals_parsed():
    assert LayerClip(0.5) == parse_clip("layer:0.5")
    assert NormClip(Schedule("warmup", (1.0, 10.0))) == parse_clip("norm:warmup(1,10)")
    assert hash(parse_clip("norm:1")) == hash(NormClip(1.0))
    assert repr(parse_clip("norm:1")) == "parse_clip('norm:1.0')"


@pytest.mark.parametrize(
    "spec", ["value:0.1", "norm:0.1", "layer:0.1", "agc:0.01", "autoclip:10", "zclip:2,warmup=1"]
)
def test_a_zero_size_gradient_among_others(spec):
    params = make_params(scale=2.0)
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    empty.grad = torch.zeros(0, 3)
    params.insert(1, empty)
    r, _, total = run(spec, params)
    assert params[1].grad.shape == (0, 3)
    assert math.isfinite(as_float(r.total_norm_after)) and as_float(r.total_norm_after) <= as_float(total)


@pytest.mark.parametrize("spec", ["norm:1.0", "layer:1.0"])
def test_gradients_on_two_devices_are_scaled_per_device(spec):
    # A "meta" tensor stands in for a second device (it has no data): the CPU gradients around it must get
    # the same coefficients as if the meta tensor had the norm we report for it.
    cpu = [torch.full((3,), 2.0), torch.full((4,), 3.0)]
    grads = [cpu[0], torch.ones(2, device="meta"), cpu[1]]
    norms = torch.tensor(
        [float(torch.linalg.vector_norm(cpu[0])), 5.0, float(torch.linalg.vector_norm(cpu[1]))]
    )
    total = torch.linalg.vector_norm(norms)
    oracle = [x.clone() for x in cpu]
    if spec.startswith("norm"):
        expected = [min(1.0, 1.0 / (float(total) + 1e-6))] * 2
    else:
        expected = [min(1.0, 1.0 / (float(norms[i]) + 1e-6)) for i in (0, 2)]
    parse_clip(spec).clip_(grads, norms, total, step=0)
    for got, o, k in zip(cpu, oracle, expected, strict=True):
        torch.testing.assert_close(got, o * k)


def test_step_must_be_a_non_negative_integer():
    params = make_params()
    grads = [p.grad for p in params]
    norms, total = measure(grads)
    strategy = parse_clip("norm:linear(2,1,10)")
    strategy.clip_(grads, norms, total, step=np.int64(3))
    for bad in (-1, 2.5, torch.tensor(3)):
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            strategy.clip_(grads, norms, total, step=bad)
