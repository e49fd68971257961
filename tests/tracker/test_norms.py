"""tracker.norms against torch's own norms (the oracle): torch.linalg.vector_norm and get_total_norm."""

import math

import pytest
import torch

from tracker.norms import DOT_MIN_NUMEL, NormPlan, grad_norms, max_abs, nonfinite_flags, tensor_norms


def _tensors(dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 3), (11,), (2, 3, 4), (1,), (5, 5)]
    return [torch.randn(shapes[i % len(shapes)], generator=g).to(dt) * (i + 1) for i, dt in enumerate(dtypes)]


@pytest.mark.parametrize(
    "dtypes",
    [
        [torch.float32] * 5,
        [torch.float32, torch.float64, torch.float32, torch.float64, torch.float32],
        [torch.bfloat16, torch.float32, torch.float16, torch.float32, torch.bfloat16],
    ],
    ids=["one-group", "two-dtypes", "low-precision-mixed"],
)
def test_per_tensor_and_total_match_torch(dtypes):
    grads = _tensors(dtypes)
    norms, total = grad_norms(grads)
    # float64 as soon as one gradient is float64, as get_total_norm's total is then
    want = torch.float64 if torch.float64 in dtypes else torch.float32
    assert norms.dtype == want == total.dtype and norms.shape == (len(grads),)
    assert torch.nn.utils.get_total_norm(grads).dtype == want
    expected = torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]).to(want)
    torch.testing.assert_close(norms, expected, rtol=2e-3 if torch.float16 in dtypes else 1e-5, atol=0)
    oracle_total = torch.nn.utils.get_total_norm([g.double() for g in grads]).to(want)
    torch.testing.assert_close(total, oracle_total, rtol=2e-3 if torch.float16 in dtypes else 1e-5, atol=0)


def test_cached_plan_gives_the_same_result_as_regrouping():
    grads = _tensors([torch.float32, torch.float64, torch.float32])
    plan = NormPlan.for_tensors(grads)
    assert plan.groups == ((0, 2), (1,))
    fresh = _tensors([torch.float32, torch.float64, torch.float32], seed=1)  # new tensors, same layout
    torch.testing.assert_close(grad_norms(fresh, plan)[0], grad_norms(fresh)[0])


def test_float16_norm_above_float16_range_stays_finite():
    # All elements finite, but the norm (1000 * 300 = 3e5) exceeds float16's max (65504).
    g = torch.full((1000,), 300.0, dtype=torch.float16)
    norms, total = grad_norms([g])
    assert torch.isfinite(norms).all()
    assert norms[0].item() == pytest.approx(300.0 * math.sqrt(1000), rel=1e-3)


def test_nonfinite_flags_mark_nan_and_inf_layers():
    grads = _tensors([torch.float32] * 4)
    grads[1][0] = float("nan")
    grads[3][-1] = float("inf")
    norms, total = grad_norms(grads)
    assert nonfinite_flags(norms).tolist() == [False, True, False, True]
    assert not torch.isfinite(total)


def test_max_abs_and_inf_norm_match_amax():
    grads = _tensors([torch.float32, torch.float64, torch.float32])
    expected = torch.stack([g.abs().amax().double() for g in grads])  # (a float64 tensor: float64 out)
    torch.testing.assert_close(max_abs(grads), expected)
    l1 = torch.stack([g.abs().sum().double() for g in grads])
    torch.testing.assert_close(tensor_norms(grads, 1.0), l1, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_inf_norm_of_an_empty_tensor_is_zero_not_an_error(dtype):
    # An FSDP2 shard of a tensor with fewer rows than ranks holds no element: torch's kernel has no identity
    # for max and raised. The oracle: amax of |x| over the non-empty ones; |x| >= 0, so 0 for no element.
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 2, generator=g, dtype=dtype), torch.zeros(0, 7, dtype=dtype)]
    tensors += [torch.randn(5, generator=g, dtype=dtype) * 4, torch.zeros(0, dtype=dtype)]
    expected = [t.abs().amax().item() if t.numel() else 0.0 for t in tensors]
    assert max_abs(tensors).tolist() == pytest.approx(expected)
    assert tensor_norms(tensors, math.inf).tolist() == pytest.approx(expected)
    assert max_abs(tensors).dtype == dtype


def test_empty_list():
    norms, total = grad_norms([])
    assert norms.numel() == 0 and total.item() == 0.0


# ---- large CPU tensors: read with dot() (tracker/norms.py), checked against float64 norms and torch's own


def _mixed_sizes(dtype=torch.float32, seed=0):
    # Large and small tensors interleaved, so the dot() reads must be put back in the original order.
    g = torch.Generator().manual_seed(seed)
    sizes = [(DOT_MIN_NUMEL,), (3, 5), (256, 1024), (7,), (DOT_MIN_NUMEL - 1,), (2, 300, 300)]
    return [torch.randn(s, generator=g, dtype=dtype) * (i + 1) for i, s in enumerate(sizes)]


def test_plan_reads_only_large_cpu_float_tensors_with_dot():
    grads = _mixed_sizes() + [torch.randn(DOT_MIN_NUMEL).to(torch.bfloat16)]
    plan = NormPlan.for_tensors(grads)
    assert plan.groups == ((0, 1, 2, 3, 4, 5), (6,))
    assert plan.splits[0].dot == (0, 2, 5)  # the one just under the threshold stays in the fused call
    assert plan.splits[1] is None  # bfloat16: the fused kernel, accumulating in float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_tensors_match_float64_norms_and_get_total_norm(dtype):
    grads = _mixed_sizes(dtype)
    norms, total = grad_norms(grads)
    assert norms.dtype == total.dtype == torch.nn.utils.get_total_norm(grads).dtype == dtype
    expected = torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(norms.double(), expected, rtol=rtol, atol=0)
    torch.testing.assert_close(total, torch.nn.utils.get_total_norm(grads), rtol=rtol * 10, atol=0)


def test_large_non_contiguous_tensor_is_read_whole():
    base = torch.randn(400, 300)
    grads = [
        base.t(),
        torch.randn(5),
        torch.randn(300, 400)[:, ::2],
    ]
    norms, _ = grad_norms(grads)
    expected = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)


def test_large_tensors_have_torchs_nonfinite_and_overflow_semantics():
    grads = _mixed_sizes()
    grads[0][5] = float("nan")
    grads[2][1, 2] = float("inf")
    grads[5][0, 0, 0] = -float("inf")
    grads.append(torch.full((DOT_MIN_NUMEL,), 1e20))  # finite elements, squares overflow float32
    grads.append(torch.full((DOT_MIN_NUMEL,), 1e-25))  # squares underflow
    norms, total = grad_norms(grads)
    oracle = torch.stack([torch.linalg.vector_norm(g) for g in grads])  # torch's own, same dtype
    assert torch.equal(torch.isnan(norms), torch.isnan(oracle))
    assert torch.equal(torch.isinf(norms), torch.isinf(oracle))
    assert nonfinite_flags(norms).tolist() == [True, False, True, False, False, True, True, False]
    assert norms[-1].item() == oracle[-1].item() == 0.0
    assert not torch.isfinite(total)


def test_large_tensors_in_a_second_group_keep_their_places():
    grads = [torch.randn(3), torch.randn(DOT_MIN_NUMEL, dtype=torch.float64), torch.randn(DOT_MIN_NUMEL)]
    norms, _ = grad_norms(grads)
    assert norms.dtype == torch.float64  # one float64 tensor: float64 norms, get_total_norm's precision
    expected = torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])
    torch.testing.assert_close(norms, expected, rtol=1e-6, atol=0)
