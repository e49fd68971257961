"""Suggested thresholds follow the published rules (AutoClip percentile; median + k * scaled MAD)."""

import statistics

import numpy as np
import pytest

from dashboard.suggest import suggest_threshold


def test_autoclip_and_robust_rule_match_their_formulas():
    rng = np.random.default_rng(1)
    norms = rng.lognormal(mean=0.5, sigma=0.4, size=999).tolist() + [float("nan"), float("inf"), 250.0]
    s = suggest_threshold(norms, percentile=10, k=3)
    finite = [v for v in norms if np.isfinite(v)]
    # AutoClip's percentile on a 0-100 scale, linear interpolation between order statistics.
    ordered = sorted(finite)
    pos = 0.10 * (len(ordered) - 1)
    lo = int(pos)
    expected = ordered[lo] + (ordered[lo + 1] - ordered[lo]) * (pos - lo)
    assert s.autoclip == pytest.approx(expected)
    median = statistics.median(finite)
    mad = 1.4826 * statistics.median([abs(v - median) for v in finite])
    assert s.median == pytest.approx(median)
    assert s.robust == pytest.approx(median + 3 * mad)
    assert s.n == len(finite)
    assert s.clip_rate_robust == pytest.approx(sum(v > median + 3 * mad for v in finite) / len(finite))
    assert 0.89 <= s.clip_rate_autoclip <= 0.91


def test_no_finite_norm_gives_none():
    assert suggest_threshold([]) is None
    assert suggest_threshold([float("nan")]) is None


@pytest.mark.parametrize("kwargs", [dict(percentile=101), dict(percentile=-1), dict(k=0)])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        suggest_threshold([1.0, 2.0], **kwargs)
