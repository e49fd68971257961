"""Annealed gradient noise (Neelakantan et al. 2015): variance eta / (1 + t)^gamma, added after clipping,
reproducible from (seed, step)."""

import math

import pytest
import torch

from tracker.clipping import GradientNoise, parse_clip


@pytest.mark.parametrize("eta, gamma", [(0.01, 0.55), (1.0, 0.55), (0.3, 1.0), (0.3, 0.0)])
def test_sigma_follows_the_formula(eta, gamma):
    noise = GradientNoise(eta, gamma)
    for t in (0, 1, 10, 1000):
        assert noise.sigma(t) == pytest.approx(math.sqrt(eta / (1 + t) ** gamma), rel=1e-12)


@pytest.mark.parametrize("t", [0, 99])
def test_added_noise_has_the_right_distribution(t):
    noise = GradientNoise(0.3, 0.55)
    grads = [torch.zeros(300_000), torch.zeros(500, 200)]
    noise.apply_(grads, t)
    sample = torch.cat([g.flatten() for g in grads]).double()
    sigma = math.sqrt(0.3 / (1 + t) ** 0.55)
    # 400k draws: the sample std is within ~0.3% of sigma and the mean within a few sigma/sqrt(n).
    assert float(sample.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(sample.mean())) < 5 * sigma / math.sqrt(sample.numel())
    # Each tensor gets its own draws, not a repeat of the first tensor's.
    assert not torch.equal(grads[0][:1000], grads[1].flatten()[:1000])


def test_noise_is_a_function_of_seed_and_step():
    def draw(seed, t):
        grads = [torch.zeros(50), torch.zeros(3, 4)]
        GradientNoise(0.1, seed=seed).apply_(grads, t)
        return torch.cat([g.flatten() for g in grads])

    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6))
    assert not torch.equal(draw(0, 5), draw(1, 5))
    # No hidden state: drawing other steps in between does not change step 5's noise.
    noise = GradientNoise(0.1)
    for t in range(5):
        noise.apply_([torch.zeros(50), torch.zeros(3, 4)], t)
    grads = [torch.zeros(50), torch.zeros(3, 4)]
    noise.apply_(grads, 5)
    assert torch.equal(torch.cat([g.flatten() for g in grads]), draw(0, 5))


def test_noise_is_added_after_clipping():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(20, 10, generator=g) * 5, torch.randn(10, generator=g) * 5]
    clipped = [x.clone() for x in grads]
    params = [torch.nn.Parameter(torch.zeros_like(x)) for x in clipped]
    for p, x in zip(params, clipped, strict=True):
        p.grad = x
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    drawn = [torch.zeros_like(x) for x in grads]
    GradientNoise(0.01, 0.55).apply_(drawn, 7)

    norms = torch.stack([torch.linalg.vector_norm(x) for x in grads])
    r = parse_clip("norm:1.0+noise(0.01)").clip_(grads, norms, torch.linalg.vector_norm(norms), step=7)
    for got, c, n in zip(grads, clipped, drawn, strict=True):
        torch.testing.assert_close(got, c + n, rtol=1e-6, atol=1e-7)
    # The clip event reports the clipping decision: the norm after clipping, before noise.
    assert float(r.total_norm_after) == pytest.approx(1.0, rel=1e-5)


def test_low_precision_gradients_keep_their_dtype():
    grads = [torch.zeros(1000, dtype=torch.bfloat16), torch.zeros(10, dtype=torch.float16)]
    GradientNoise(1.0).apply_(grads, 0)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float16]
    assert all(torch.count_nonzero(g) > 0 for g in grads)
