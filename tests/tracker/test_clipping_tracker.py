"""Clipping end to end: a real GradTracker trains a small model into a real SQLite file, and the recorded
clip events are checked against the published rules recomputed from the recorded pre-clip norms."""

import math
import sqlite3

import numpy as np
import pytest
import torch

from tracker import GradTracker


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matmuls on a shared 2-core machine: intra-op threads only spin (6 s -> 0.05 s for this loop).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(db, clip, steps=40):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with GradTracker(model, db=db, run="clip-e2e", clip=clip, every=3) as tracker:
        for t in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y) * (25.0 if t in (31, 32) else 1.0)
            loss.backward()
            tracker.step(loss=loss)
            opt.step()
            opt.zero_grad()
        spec = tracker.clip.spec
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT step, strategy, threshold, norm_before, norm_after, coef, clipped FROM clip_events "
            "ORDER BY step"
        ).fetchall()
        recorded_spec = conn.execute("SELECT clip FROM runs").fetchone()[0]
    assert recorded_spec == spec
    assert [r[0] for r in rows] == list(range(steps))  # one event per step, logged or not
    assert {r[1] for r in rows} == {spec}
    return rows


def test_autoclip_events_follow_numpy_percentile(db_path):
    rows = train(db_path, "autoclip:25")
    before = [r[3] for r in rows]
    for t, (_, _, threshold, n, after, _, clipped) in enumerate(rows):
        expected = float(np.percentile(before[: t + 1], 25))
        assert threshold == pytest.approx(expected, rel=1e-5)
        assert bool(clipped) == (n > expected)
        assert after == pytest.approx(expected * n / (n + 1e-6) if n > expected else n, rel=1e-5)
    assert rows[31][6] and rows[32][6]  # the loss spike (x25) is clipped


def test_zclip_events_follow_the_papers_rule(db_path):
    rows = train(db_path, "zclip:2.5,warmup=10")
    mean = var = None
    spikes = 0
    for t, (_, _, threshold, g, after, _, clipped) in enumerate(rows):
        if t < 10:
            assert threshold is None and not clipped  # NaN threshold is stored as NULL
            if t == 9:
                warm = [r[3] for r in rows[:10]]
                mean = sum(warm) / 10
                var = sum((x - mean) ** 2 for x in warm) / 10
            continue
        std = math.sqrt(var)
        z = (g - mean) / (std + 1e-6)
        g_star = mean + 2.5**2 * std / z if z > 2.5 else g
        assert threshold == pytest.approx(mean + 2.5 * std, rel=1e-4)
        assert bool(clipped) == (z > 2.5)
        assert after == pytest.approx(g_star, rel=1e-4)
        spikes += bool(clipped)
        mean = 0.97 * mean + 0.03 * g_star
        var = 0.97 * var + 0.03 * (g_star - mean) ** 2
    assert spikes >= 1  # the loss spike at step 31 was clipped


def test_scheduled_norm_threshold_is_recorded_per_step(db_path):
    rows = train(db_path, "norm:cosine(2,0.05,30)")
    for t, (_, _, threshold, n, after, _, clipped) in enumerate(rows):
        c = 0.05 + (2 - 0.05) * (1 + math.cos(math.pi * min(t, 30) / 30)) / 2
        assert threshold == pytest.approx(c, rel=1e-6)
        assert bool(clipped) == (n > c)
        assert after == pytest.approx(min(n, c), rel=1e-4)
