"""Optional per-layer statistics (weight norm, update/weight ratio, max |g|) against direct torch formulas."""

import pytest
import torch
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker


@pytest.mark.parametrize("every", [1, 2])
def test_extra_stats_match_their_formulas(db_path, every):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    expected = {}
    with GradTracker(model, db=db_path, extra_stats=True, clip="value:0.01", every=every) as tracker:
        for step in range(4):
            opt.zero_grad()
            model(torch.randn(8, 4, generator=g)).pow(2).sum().backward()
            before = [p.detach().clone() for p in model.parameters()]
            max_g = [p.grad.abs().max().item() for p in model.parameters()]  # before clipping
            tracker.step()
            opt.step()
            for i, (b, p) in enumerate(zip(before, model.parameters(), strict=True)):
                w = torch.linalg.vector_norm(b).item()
                ratio = (torch.linalg.vector_norm(p.detach() - b) / torch.linalg.vector_norm(b)).item()
                expected[(step, i)] = (w, ratio, max_g[i])
    rows = _rows(db_path, "SELECT step, layer_id, weight_norm, update_ratio, max_abs FROM grad_stats")
    assert sorted({r[0] for r in rows}) == list(range(0, 4, every))
    assert len(rows) == 4 * len(range(0, 4, every))
    for step, layer, w, ratio, m in rows:
        assert (w, ratio, m) == pytest.approx(expected[(step, layer)], rel=1e-5)


def test_a_subset_of_extra_stats(db_path):
    model = nn.Linear(3, 2)
    with GradTracker(model, db=db_path, extra_stats=("max_abs",)) as tracker:
        model(torch.ones(1, 3)).sum().backward()
        tracker.step()
    rows = _rows(
        db_path, "SELECT layer_id, weight_norm, update_ratio, max_abs FROM grad_stats ORDER BY layer_id"
    )
    assert rows == [(0, None, None, 1.0), (1, None, None, 1.0)]
