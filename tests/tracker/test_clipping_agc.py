"""AGC against the published unit-wise formula (Brock et al. 2021, eq. 3 and the nfnets reference code),
written out here with numpy in float64, row by row."""

import numpy as np
import pytest
import torch

from tests.tracker.agc_oracle import oracle
from tracker import GradTracker
from tracker.clipping import parse_clip, unitwise_norm

# name -> shape: Linear [out, in], conv [out, in, kh, kw], bias, a one-output head and a one-input column.
LAYERS = {
    "conv.weight": (6, 3, 3, 3),
    "conv.bias": (6,),
    "fc.weight": (5, 12),
    "fc.bias": (5,),
    "head.weight": (1, 5),
    "col.weight": (4, 1),
    "fc2.weight": (3, 5),
}


def make(seed=0, grad_scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    names, params = [], []
    for name, shape in LAYERS.items():
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype) * 0.1)
        p.grad = torch.randn(shape, generator=g, dtype=dtype) * grad_scale
        names.append(name)
        params.append(p)
    params[1].data.zero_()  # a zero-initialised bias: the 1e-3 floor on ||W|| is what lets it move
    return names, params


def clip(spec, names, params):
    grads = [p.grad for p in params]
    norms = torch.stack([torch.linalg.vector_norm(x) for x in grads])
    total = torch.linalg.vector_norm(norms)
    return parse_clip(spec).clip_(grads, norms, total, params=params, names=names, step=0)


@pytest.mark.parametrize("clipping", [0.01, 0.16, 1.0, 100.0])
def test_agc_matches_the_unitwise_formula(clipping):
    names, params = make()
    expected = [oracle(p.detach().double().numpy(), p.grad.double().numpy(), clipping) for p in params]
    originals = [p.grad.clone() for p in params]
    r = clip(f"agc:{clipping}", names, params)
    for p, e in zip(params, expected, strict=True):
        np.testing.assert_allclose(p.grad.double().numpy(), e, rtol=1e-5, atol=1e-8)
    changed = [not torch.equal(p.grad, g0) for p, g0 in zip(params, originals, strict=True)]
    assert int(r.n_clipped) == sum(changed)
    assert bool(r.clipped) == any(changed)
    assert float(r.threshold) == pytest.approx(clipping)
    after = np.sqrt(sum((e**2).sum() for e in expected))
    assert float(r.total_norm_after) == pytest.approx(after, rel=1e-5)
    assert 0.0 < float(r.coef) <= 1.0


def to_numpy(t):
    """float64 or complex128, for the oracle."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64).numpy()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float64])
@pytest.mark.parametrize("clipping", [0.01, 0.16, 100.0])
def test_agc_matches_the_unitwise_formula_for_complex_and_float64(dtype, clipping):
    # Complex units are measured by the moduli |z| of their elements (torch.linalg.vector_norm's norm of a
    # complex tensor, numpy's np.abs in the oracle). These dtypes used to crash: vector_norm refuses
    # dtype=float32 for complex and for float64 input.
    names, params = make(seed=1, dtype=dtype)
    expected = [oracle(to_numpy(p), to_numpy(p.grad), clipping) for p in params]
    originals = [p.grad.clone() for p in params]
    r = clip(f"agc:{clipping}", names, params)
    for p, e in zip(params, expected, strict=True):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(to_numpy(p.grad), e, rtol=1e-5, atol=1e-8)
    changed = [not torch.equal(p.grad, g0) for p, g0 in zip(params, originals, strict=True)]
    assert int(r.n_clipped) == sum(changed) and bool(r.clipped) == any(changed)
    if clipping < 1:  # (so that the test compares something that was clipped)
        assert any(changed)
    after = np.sqrt(sum((np.abs(e) ** 2).sum() for e in expected))
    assert float(r.total_norm_after) == pytest.approx(after, rel=1e-5)


@pytest.mark.parametrize("grad_scale", [1e2, 1e3, 1e4])
def test_float16_agc_keeps_small_coefficients(grad_scale):
    # Unit coefficients of 1e-6..1e-8 (a float16 weight of norm ~0.08 per row, gradients of ~1e3..1e5): cast
    # to float16 before multiplying they lost precision or became 0 (below float16's normal range), wiping
    # the gradient. The oracle in float64, rounded to float16 as the gradient is.
    g = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter((torch.randn(64, 64, generator=g) * 0.01).half())
    w.grad = (torch.randn(64, 64, generator=g) * grad_scale).half()
    expected = oracle(to_numpy(w), to_numpy(w.grad), 0.01)
    clip("agc:0.01", ["w"], [w])
    # (float16 rounding; elements below its normal range, 6.1e-5, are subnormals spaced 6e-8 apart)
    np.testing.assert_allclose(to_numpy(w.grad), expected, rtol=2e-3, atol=6e-8)


def test_complex_agc_through_the_tracker(db_path):
    # The failing case as reported: a complex weight next to a real bias, trained through GradTracker.
    class Complex(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.cfloat))
            self.b = torch.nn.Parameter(torch.randn(4))

        def forward(self, x):
            return (self.w @ x).abs().pow(2).sum() + self.b.pow(2).sum()

    torch.manual_seed(0)
    model = Complex()
    with GradTracker(model, db=db_path, run="complex", clip="agc:0.01") as tracker:
        for _ in range(3):
            model(torch.randn(4, dtype=torch.cfloat)).backward()
            expected = [oracle(to_numpy(p), to_numpy(p.grad), 0.01) for p in model.parameters()]
            stats = tracker.step()
            for p, e in zip(model.parameters(), expected, strict=True):
                np.testing.assert_allclose(to_numpy(p.grad), e, rtol=1e-5, atol=1e-8)
            model.zero_grad()
    assert stats.clipped and 0.0 < stats.coef < 1.0


def test_agc_reported_coef_is_the_smallest_unit_coefficient():
    names, params = make(grad_scale=10.0)
    coefs = []
    for p in params:
        w, g = p.detach().double().numpy(), p.grad.double().numpy()
        rows = [(w, g)] if np.squeeze(w).ndim <= 1 else [(w[i], g[i]) for i in range(w.shape[0])]
        for uw, ug in rows:
            max_norm = 0.01 * max(np.linalg.norm(uw), 1e-3)
            coefs.append(min(1.0, max_norm / max(np.linalg.norm(ug), 1e-6)))
    r = clip("agc:0.01", names, params)
    assert float(r.coef) == pytest.approx(min(coefs), rel=1e-5)


def test_exclude_skips_module_prefix_only():
    names, params = make(grad_scale=10.0)
    before = {n: p.grad.clone() for n, p in zip(names, params, strict=True)}
    clip("agc:0.01,exclude=fc", names, params)
    for n, p in zip(names, params, strict=True):
        if n.startswith("fc."):
            assert torch.equal(p.grad, before[n]), n  # fc.weight and fc.bias are skipped
        else:
            assert not torch.equal(p.grad, before[n]), n  # fc2.weight is not part of module fc


class _TiedHead(torch.nn.Module):
    """An embedding whose matrix is also the output layer (weight tying): recorded once, as embed.weight."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.body = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(torch.tanh(self.body(self.embed(x))))


def test_exclude_reaches_a_tied_head_by_its_alias(tmp_path):
    # The paper leaves the classifier unclipped; with the head tied to the embedding the tensor is recorded
    # as embed.weight, and exclude=head must still leave it alone (it used to clip every tensor).
    torch.manual_seed(0)
    model = _TiedHead()
    tracker = GradTracker(model, db=tmp_path / "g.db", run="tied", clip="agc:0.001,exclude=head")
    model(torch.tensor([[0, 1, 2, 3, 4, 5]])).pow(2).sum().mul(100).backward()
    before = {n: p.grad.detach().numpy().astype(np.float64) for n, p in model.named_parameters()}
    weights = {n: p.detach().numpy().astype(np.float64) for n, p in model.named_parameters()}
    tracker.step()
    tracker.finish()
    after = dict(model.named_parameters())
    assert torch.equal(after["embed.weight"].grad, torch.from_numpy(before["embed.weight"]).float())
    for name in ("body.weight", "body.bias"):
        expected = oracle(weights[name], before[name], 0.001)
        assert not np.allclose(expected, before[name]), name  # the oracle clips them: a real check
        np.testing.assert_allclose(after[name].grad.numpy(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("env", [False, True])
def test_an_exclude_matching_no_parameter_is_refused(tmp_path, monkeypatch, env):
    # A typo used to be ignored: every tensor, the head too, was clipped without a word.
    spec = "agc:0.01,exclude=bdy"
    if env:
        monkeypatch.setenv("GRADWATCH_CLIP", spec)
    with pytest.raises(ValueError) as info:
        GradTracker(_TiedHead(), db=tmp_path / "g.db", run="typo", clip="none" if env else spec)
    message = str(info.value)
    assert message.startswith(f"clip {spec!r}{' (from GRADWATCH_CLIP)' if env else ''}: agc exclude=bdy")
    assert "matches no parameter" in message and "top-level modules: body, embed, head" in message
    assert not (tmp_path / "g.db").exists()  # refused before any file was made
    # A module prefix, a full name and an alias of a tied tensor are all names the model has.
    monkeypatch.delenv("GRADWATCH_CLIP", raising=False)
    for spec in ("agc:0.01,exclude=body", "agc:0.01,exclude=body.bias", "agc:0.01,exclude=head.weight"):
        GradTracker(_TiedHead(), db=tmp_path / "ok.db", run="ok", clip=spec).finish()


def test_exclude_needs_names_and_agc_needs_params():
    names, params = make()
    grads = [p.grad for p in params]
    norms = torch.stack([torch.linalg.vector_norm(x) for x in grads])
    with pytest.raises(ValueError, match="needs names="):
        parse_clip("agc:0.01,exclude=fc").clip_(grads, norms, norms.norm(), params=params)
    with pytest.raises(ValueError, match="needs params="):
        parse_clip("agc:0.01").clip_(grads, norms, norms.norm())


def test_nonfinite_unit_is_left_alone_and_others_clipped():
    names, params = make(grad_scale=10.0)
    params[2].grad[1, 3] = float("inf")
    with np.errstate(invalid="ignore"):  # the oracle's row 1 is inf * 0; that row is not compared
        expected = [oracle(p.detach().double().numpy(), p.grad.double().numpy(), 0.01) for p in params]
    clip("agc:0.01", names, params)
    got = params[2].grad.double().numpy()
    assert np.isinf(got[1, 3]) and np.isfinite(np.delete(got[1], 3)).all()
    np.testing.assert_allclose(np.delete(got, 1, axis=0), np.delete(expected[2], 1, axis=0), rtol=1e-5)


def test_unitwise_norm_shapes():
    assert unitwise_norm(torch.ones(4, 3, 2, 2)).shape == (4, 1, 1, 1)
    assert unitwise_norm(torch.ones(5, 7)).shape == (5, 1)
    assert unitwise_norm(torch.ones(7)).shape == ()
    assert unitwise_norm(torch.ones(1, 7)).shape == ()  # squeezes to a vector: one unit
    assert float(unitwise_norm(torch.full((4, 1), 2.0))) == pytest.approx(4.0)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 7), (7,), (1, 7), ()])
def test_unitwise_norm_of_complex_is_the_norm_of_the_moduli(shape):
    x = torch.randn(shape, dtype=torch.complex128)
    got = unitwise_norm(x)
    assert got.dtype == torch.float64 and got.shape == unitwise_norm(x.real).shape  # complex128: float64
    a = np.abs(x.numpy())
    vector_like = sum(1 for s in shape if s != 1) <= 1
    want = np.sqrt((a**2).sum()) if vector_like else np.sqrt((a**2).reshape(shape[0], -1).sum(1))
    np.testing.assert_allclose(got.numpy().reshape(np.shape(want)), want, rtol=1e-12)
    # A lazily conjugated tensor (x.conj()) has the same moduli.
    torch.testing.assert_close(unitwise_norm(x.conj()), got)
