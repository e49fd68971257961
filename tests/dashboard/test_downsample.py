"""The min/max envelope keeps every bucket's extremes (checked against a brute-force per-bucket scan)."""

import numpy as np
import pytest

from dashboard.downsample import minmax_envelope, minmax_indices


def _buckets(n, n_buckets):
    # Independent oracle: the same equal-count bucketing written as explicit index ranges.
    edges = [(b * n + n_buckets - 1) // n_buckets for b in range(n_buckets + 1)]
    return [range(edges[b], edges[b + 1]) for b in range(n_buckets)]


def test_short_series_unchanged():
    x, y = np.arange(10), np.linspace(0, 1, 10)
    xs, ys = minmax_envelope(x, y, 100)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_keeps_each_bucket_min_and_max_in_step_order():
    rng = np.random.default_rng(0)
    n, max_points = 10_007, 500
    x = np.arange(n) * 3
    y = rng.lognormal(size=n)
    xs, ys = minmax_envelope(x, y, max_points)
    assert len(xs) <= max_points
    assert np.all(np.diff(xs) > 0)
    kept = set(xs.tolist())
    for bucket in _buckets(n, max_points // 2):
        idx = np.array(bucket)
        assert x[idx[np.argmax(y[idx])]] in kept
        assert x[idx[np.argmin(y[idx])]] in kept
    np.testing.assert_array_equal(ys, y[np.searchsorted(x, xs)])


def test_the_indices_are_those_of_the_points_kept():
    # What goes with each point (its hover) is thinned by these positions: they must be the points' own.
    rng = np.random.default_rng(1)
    x, y = np.arange(5_003) * 7, rng.lognormal(size=5_003)
    keep = minmax_indices(x, y, 300)
    xs, ys = minmax_envelope(x, y, 300)
    np.testing.assert_array_equal(x[keep], xs)
    np.testing.assert_array_equal(y[keep], ys)
    np.testing.assert_array_equal(minmax_indices(x[:10], y[:10], 300), np.arange(10))


def test_a_single_spike_survives():
    y = np.ones(100_000)
    y[77_777] = 1e6
    xs, ys = minmax_envelope(np.arange(100_000), y, 2000)
    assert ys.max() == 1e6 and 77_777 in xs


def test_non_finite_steps_are_kept():
    y = np.ones(50_000)
    y[123] = np.nan
    y[40_000] = np.inf
    xs, _ = minmax_envelope(np.arange(50_000), y, 1000)
    assert 123 in xs and 40_000 in xs


@pytest.mark.parametrize("bad", [0, 1, -5])
def test_bad_max_points(bad):
    with pytest.raises(ValueError, match="max_points"):
        minmax_envelope(np.arange(10), np.arange(10), bad)
