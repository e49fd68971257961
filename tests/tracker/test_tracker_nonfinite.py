"""Non-finite gradients under the three policies, with a NaN / Inf injected into a known layer."""

import copy

import pytest
import torch
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker, NonFiniteGradientError

BAD_STEP = 1


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _train(model, tracker, steps=3, poison=float("nan")):
    """Adam (momentum makes a zeroed gradient still move the weights: only a true skip leaves them alone)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    snapshots, stats = [], []
    for step in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        if step == BAD_STEP:
            model[2].weight.grad[0, 0] = poison  # layer id 2 = "2.weight"
        stats.append(tracker.step())
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        snapshots.append((before, [p.detach().clone() for p in model.parameters()]))
    return stats, snapshots, opt


def test_record_flags_the_layer_and_goes_on(db_path):
    model = _model()
    with GradTracker(model, db=db_path) as tracker:
        stats, _, _ = _train(model, tracker)
    assert [s.skipped for s in stats] == [False, False, False]
    # (From step 2 on everything is NaN: the NaN update poisoned the weights. We look up to the bad step.)
    nonfinite = _rows(
        db_path, f"SELECT step, layer_id, has_nan, has_inf FROM nonfinite WHERE step <= {BAD_STEP}"
    )
    assert nonfinite == [(BAD_STEP, 2, 1, 0)]
    first = _rows(
        db_path, "SELECT step, first_nonfinite_layer, nonfinite_count, skipped FROM steps ORDER BY step"
    )
    assert first[BAD_STEP] == (BAD_STEP, 2, 1, 0) and first[0] == (0, None, 0, 0)
    assert first[2][1] == 0  # the first layer (by layer order) that went non-finite


def test_inf_is_told_apart_from_nan(db_path):
    model = _model()
    with GradTracker(model, db=db_path) as tracker:
        _train(model, tracker, steps=BAD_STEP + 1, poison=float("inf"))
    assert _rows(db_path, "SELECT step, layer_id, has_nan, has_inf FROM nonfinite") == [(BAD_STEP, 2, 0, 1)]


def test_skip_leaves_parameters_and_optimizer_state_untouched(db_path):
    model = _model()
    with GradTracker(model, db=db_path, nonfinite="skip", clip="norm:1.0") as tracker:
        stats, snapshots, opt = _train(model, tracker)
    assert [s.skipped for s in stats] == [False, True, False]
    before, after = snapshots[BAD_STEP]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(opt.state[p]["step"].item() == 2 for p in model.parameters())  # 3 steps, one skipped
    before, after = snapshots[BAD_STEP + 1]
    assert not all(torch.equal(b, a) for b, a in zip(before, after, strict=True))  # training goes on
    assert _rows(db_path, "SELECT step, skipped FROM steps ORDER BY step") == [(0, 0), (1, 1), (2, 0)]
    assert [r[0] for r in _rows(db_path, "SELECT step FROM clip_events ORDER BY step")] == [0, 2]  # no clip


def _adam_state(opt):
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in opt.param_groups[0]["params"]]


def test_skip_on_an_unlogged_step_is_logged_and_leaves_the_step_out(db_path):
    # every=3 logs steps 0 and 3; the NaN at step 1 makes it skipped, and skipped steps are always logged.
    # Oracle: a copy trained on the same batches with clip_grad_norm_ that simply does not step at step 1.
    model = _model()
    oracle = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    oracle_opt = torch.optim.Adam(oracle.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    stats, totals = [], {}
    with GradTracker(model, db=db_path, nonfinite="skip", every=3, clip="norm:1.0") as tracker:
        for step in range(5):
            x = torch.randn(5, 4, generator=g)
            for m, o in ((model, opt), (oracle, oracle_opt)):
                o.zero_grad()
                m(x).pow(2).mean().backward()
            if step == BAD_STEP:
                model[2].weight.grad[0, 0] = float("nan")  # layer id 2 = "2.weight"
            params, state = [p.detach().clone() for p in model.parameters()], _adam_state(opt)
            stats.append(tracker.step())
            opt.step()
            if step == BAD_STEP:  # untouched: same parameters, same Adam moments and step counts
                assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
                for before, after in zip(state, _adam_state(opt), strict=True):
                    assert before.keys() == after.keys()
                    assert all(torch.equal(before[k], after[k]) for k in before)
            else:
                totals[step] = torch.nn.utils.clip_grad_norm_(oracle.parameters(), 1.0).item()
                oracle_opt.step()
            for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
                torch.testing.assert_close(p, q)
            for mine, expected in zip(_adam_state(opt), _adam_state(oracle_opt), strict=True):
                torch.testing.assert_close(mine, expected)
    assert [(s.skipped, s.logged) for s in stats] == [
        (False, True),
        (True, True),
        (False, False),
        (False, True),
        (False, False),
    ]
    assert all(opt.state[p]["step"].item() == 4 for p in model.parameters())  # 5 steps, one skipped
    steps = _rows(
        db_path,
        "SELECT step, skipped, nonfinite_count, first_nonfinite_layer, clipped, total_norm "
        "FROM steps ORDER BY step",
    )
    assert [r[:4] for r in steps] == [(0, 0, 0, None), (1, 1, 1, 2), (3, 0, 0, None)]
    assert steps[1][4:] == (0, None)  # skipped: not clipped; its NaN global norm is stored as NULL
    assert [steps[0][5], steps[2][5]] == pytest.approx([totals[0], totals[3]], rel=1e-6)
    assert [bool(steps[0][4]), bool(steps[2][4])] == [totals[0] > 1.0, totals[3] > 1.0]
    assert _rows(db_path, "SELECT step, layer_id, has_nan, has_inf FROM nonfinite") == [(BAD_STEP, 2, 1, 0)]
    null_norms = _rows(db_path, "SELECT step, layer_id FROM grad_norms WHERE norm IS NULL")
    assert null_norms == [(BAD_STEP, 2)]
    assert [r[0] for r in _rows(db_path, "SELECT DISTINCT step FROM grad_norms ORDER BY step")] == [0, 1, 3]
    # Every step but the skipped one made a clip decision (buffered ones included).
    assert [r[0] for r in _rows(db_path, "SELECT step FROM clip_events ORDER BY step")] == [0, 2, 3, 4]


def test_raise_names_the_first_bad_layer_and_records_the_step(db_path):
    model = _model()
    with pytest.raises(NonFiniteGradientError, match=r"step 1 in layer '2\.weight'") as info:
        with GradTracker(model, db=db_path, nonfinite="raise") as tracker:
            _train(model, tracker)
    assert info.value.step == BAD_STEP and info.value.layers == ["2.weight"]
    assert _rows(db_path, "SELECT status FROM runs")[0][0] == "failed"
    assert _rows(db_path, "SELECT step, first_nonfinite_layer FROM steps ORDER BY step") == [
        (0, None),
        (1, 2),
    ]


def test_raise_on_an_unlogged_step_with_update_ratios_records_the_step_and_raises(db_path):
    # The update ratio holds a logged step's row until the optimizer step; an unlogged step that raises
    # must be measured and recorded whole all the same, and the error be the documented one.
    model = _model()
    with pytest.raises(NonFiniteGradientError, match="step 1"):
        with GradTracker(model, db=db_path, nonfinite="raise", every=5, extra_stats=True) as tracker:
            _train(model, tracker)
    assert _rows(db_path, "SELECT step, first_nonfinite_layer FROM steps ORDER BY step") == [
        (0, None),
        (1, 2),
    ]
    n_layers = len(list(model.parameters()))
    assert _rows(db_path, "SELECT COUNT(*) FROM grad_stats WHERE step = 1") == [(n_layers,)]


def test_nan_on_an_unlogged_step_is_still_recorded(db_path):
    model = _model()
    with GradTracker(model, db=db_path, every=2) as tracker:
        _train(model, tracker, steps=BAD_STEP + 1)
    assert [r[0] for r in _rows(db_path, "SELECT step FROM steps ORDER BY step")] == [0]
    assert _rows(db_path, "SELECT step, layer_id, has_nan FROM nonfinite") == [(BAD_STEP, 2, 1)]
