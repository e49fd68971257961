"""AutoClip against numpy.percentile over the norm history; ZClip against a plain-Python transcription of the
paper's algorithm (Kumar et al. 2025, Algorithm 1, z-score mode with reciprocal clipping)."""

import io
import math

import numpy as np
import pytest
import torch

from tracker.clipping import AutoClip, ZClip, parse_clip

# Global norms with a trend, noise and a few spikes: the case both methods are meant for.
rng = np.random.default_rng(0)
NORMS = [float(x) for x in np.abs(2.0 + 0.3 * rng.standard_normal(90)) * np.linspace(1.0, 0.5, 90)]
for i in (30, 31, 47, 70):
    NORMS[i] *= 12.0

DIRECTION = [torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.randn(4)]


def grads_with_norm(n):
    """Two gradient tensors whose global L2 norm is n."""
    unit = math.sqrt(sum(float((d**2).sum()) for d in DIRECTION))
    return [d * (n / unit) for d in DIRECTION]


def step(strategy, n, t):
    grads = grads_with_norm(n)
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(norms)
    return strategy.clip_(grads, norms, total, step=t), grads, float(total)


def after_norm(grads):
    return float(torch.nn.utils.get_total_norm(grads))


class TestAutoClip:
    @pytest.mark.parametrize("p, window", [(10, None), (50, None), (100, None), (25, 7), (90, 5), (100, 3)])
    def test_threshold_is_numpy_percentile_of_history_including_current(self, p, window):
        strategy = AutoClip(p, window)
        history = []
        for t, n in enumerate(NORMS):
            r, grads, measured = step(strategy, n, t)
            history.append(measured)
            kept = history if window is None else history[-window:]
            expected = float(np.percentile(kept, p))  # numpy's default "linear" method
            assert float(r.threshold) == pytest.approx(expected, rel=1e-6), t
            expected_after = expected * measured / (measured + 1e-6) if measured > expected else measured
            assert after_norm(grads) == pytest.approx(expected_after, rel=1e-5), t
            assert bool(r.clipped) == (measured > expected)

    def test_history_grows_past_its_first_allocation(self):
        strategy = parse_clip("autoclip:10")
        norms = [1.0 + (t % 17) for t in range(300)]
        for t, n in enumerate(norms):
            r, _, _ = step(strategy, n, t)
        assert float(r.threshold) == pytest.approx(float(np.percentile(norms, 10)), rel=1e-6)
        assert strategy.history().numel() == 300

    @pytest.mark.parametrize("p, window", [(50, None), (75, 3), (100, 4)])
    def test_nonfinite_norms_do_not_enter_the_history(self, p, window):
        strategy = AutoClip(p, window)
        norms = [1.0, 2.0, float("inf"), 3.0, float("nan"), 4.0, 0.5, float("inf"), float("nan"), 6.0, 5.0]
        for t, n in enumerate(norms):
            r, _, _ = step(strategy, n, t)
            if math.isfinite(n):
                kept = norms[: t + 1] if window is None else norms[max(0, t + 1 - window) : t + 1]
                expected = float(np.percentile([x for x in kept if math.isfinite(x)], p))
                assert float(r.threshold) == pytest.approx(expected, rel=1e-5), t
            else:
                assert not bool(r.clipped) and float(r.coef) == 1.0

    def test_a_window_of_only_nonfinite_norms_has_no_threshold(self):
        strategy = AutoClip(50, window=2)
        for t, n in enumerate([1.0, float("nan"), float("inf")]):
            r, _, _ = step(strategy, n, t)
        assert math.isnan(float(r.threshold)) and not bool(r.clipped)
        r, _, _ = step(strategy, 3.0, 3)
        assert float(r.threshold) == pytest.approx(3.0)

    @pytest.mark.parametrize("window", [None, 6])
    def test_state_dict_resumes_exactly(self, window):
        a = AutoClip(30, window)
        for t, n in enumerate(NORMS[:20]):
            step(a, n, t)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        b = AutoClip(30, window)
        b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        for t, n in enumerate(NORMS[20:40], start=20):
            ra, _, _ = step(a, n, t)
            rb, _, _ = step(b, n, t)
            assert float(ra.threshold) == float(rb.threshold)


class PlainZClip:
    """The paper's pseudo-code, in Python floats (no torch)."""

    def __init__(self, z_thresh=2.5, alpha=0.97, warmup=25, eps=1e-6):
        self.z_thresh, self.alpha, self.warmup, self.eps = z_thresh, alpha, warmup, eps
        self.buffer, self.mean, self.var = [], None, None

    def step(self, g):
        """Returns (norm to clip to or None, trigger level or None) and updates the statistics."""
        if self.mean is None:
            self.buffer.append(g)
            if len(self.buffer) == self.warmup:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return None, None
        std = math.sqrt(self.var)
        level = self.mean + self.z_thresh * std
        z = (g - self.mean) / (std + self.eps)
        clip_to = None
        if z > self.z_thresh:
            clip_to = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
        g_star = clip_to if clip_to is not None else g
        self.mean = self.alpha * self.mean + (1 - self.alpha) * g_star
        self.var = self.alpha * self.var + (1 - self.alpha) * (g_star - self.mean) ** 2
        return clip_to, level


class TestZClip:
    @pytest.mark.parametrize("z, alpha, warmup", [(2.5, 0.97, 25), (2.0, 0.9, 10), (3.0, 0.99, 5)])
    def test_matches_the_papers_algorithm(self, z, alpha, warmup):
        ours, plain = ZClip(z, alpha, warmup), PlainZClip(z, alpha, warmup)
        n_clipped = 0
        for t, n in enumerate(NORMS):
            r, grads, measured = step(ours, n, t)
            clip_to, level = plain.step(measured)
            if level is None:
                assert math.isnan(float(r.threshold)) and not bool(r.clipped), t
                assert after_norm(grads) == pytest.approx(measured, rel=1e-6)
                continue
            assert float(r.threshold) == pytest.approx(level, rel=1e-5), t
            assert bool(r.clipped) == (clip_to is not None), t
            if clip_to is not None:
                n_clipped += 1
                assert clip_to < measured
                assert float(r.coef) == pytest.approx(clip_to / (measured + 1e-6), rel=1e-5)
                assert after_norm(grads) == pytest.approx(clip_to, rel=1e-5), t
                assert float(r.total_norm_after) == pytest.approx(clip_to, rel=1e-5)
            else:
                assert after_norm(grads) == pytest.approx(measured, rel=1e-6)
            assert float(ours.mean) == pytest.approx(plain.mean, rel=1e-5)
            assert float(ours.var) == pytest.approx(plain.var, rel=1e-4)
        assert n_clipped >= 2  # the spikes after warm-up were caught

    def test_warmup_clips_nothing_and_ignores_nonfinite_norms(self):
        ours = ZClip(2.5, 0.97, 4)
        for t, n in enumerate([1.0, float("nan"), 2.0, 3.0]):
            r, _, _ = step(ours, n, t)
            assert not bool(r.clipped)
        assert float(ours.mean) == pytest.approx(2.0)
        assert float(ours.var) == pytest.approx(2.0 / 3.0, rel=1e-6)
        mean, var = float(ours.mean), float(ours.var)
        r, _, _ = step(ours, float("inf"), 4)  # after warm-up: untouched, statistics unchanged
        assert not bool(r.clipped) and float(r.coef) == 1.0
        assert (float(ours.mean), float(ours.var)) == (mean, var)

    @pytest.mark.parametrize("stop_at", [3, 40])
    def test_state_dict_resumes_exactly(self, stop_at):
        a = ZClip(2.0, 0.9, 10)
        for t, n in enumerate(NORMS[:stop_at]):
            step(a, n, t)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        b = ZClip(2.0, 0.9, 10)
        b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        for t, n in enumerate(NORMS[stop_at : stop_at + 30], start=stop_at):
            ra, _, _ = step(a, n, t)
            rb, _, _ = step(b, n, t)
            assert float(ra.coef) == float(rb.coef)
            torch.testing.assert_close(ra.threshold, rb.threshold, equal_nan=True, rtol=0, atol=0)
