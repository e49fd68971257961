"""attach(): measuring and clipping from an optimizer step pre-hook, with a real GradScaler on CPU."""

import pytest
import torch
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3))


def _data(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(6, 5, generator=g) * 4, torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def test_attached_tracker_clips_like_clip_grad_norm_without_a_call_in_the_loop(db_path):
    data = _data(5)
    oracle, tracked = _model(), _model()
    opt_o = torch.optim.SGD(oracle.parameters(), lr=0.3)
    totals = []
    for x, y in data:
        opt_o.zero_grad()
        nn.functional.cross_entropy(oracle(x), y).backward()
        totals.append(torch.nn.utils.clip_grad_norm_(oracle.parameters(), 0.5).item())
        opt_o.step()

    opt = torch.optim.SGD(tracked.parameters(), lr=0.3)
    with GradTracker(tracked, db=db_path, clip="norm:0.5") as tracker:
        tracker.attach(opt)
        for x, y in data:  # the user's loop is untouched
            opt.zero_grad()
            nn.functional.cross_entropy(tracked(x), y).backward()
            opt.step()
    for p, q in zip(tracked.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert [r[0] for r in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")] == pytest.approx(
        totals, rel=1e-6
    )


def test_remove_detaches(db_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(1)[0]
    with GradTracker(model, db=db_path) as tracker:
        handle = tracker.attach(opt)
        for i in range(3):
            if i == 2:
                handle.remove()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        assert tracker.step_count == 2
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(2,)]


def _amp_loop(model, opt, scaler, data, poison_step, *, unscale_first=False):
    """The canonical GradScaler loop; at `poison_step` one gradient is made inf after backward, as an fp16
    overflow would, so the scaler skips that optimizer step. `unscale_first`: `scaler.unscale_(opt)` before
    `scaler.step(opt)`, as a loop that clips itself does."""
    for step, (x, y) in enumerate(data):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if poison_step is not None and step == poison_step:
            model[0].weight.grad[1, 1] = float("inf")
        if unscale_first:
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()


# fused=True: GradScaler calls the optimizer on every step, its gradients still scaled, and the fused kernel
# unscales and skips on inf itself; the hook used to measure and clip the scaled gradients (1024 times too
# large here) and to record the kernel's skip as a step taken.
@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_steps_are_measured_unscaled_and_its_skips_recorded(db_path, fused):
    data = _data(4)
    # Oracle: the same loop without AMP. The scale is a power of two, so unscaled grads match exactly.
    oracle = _model()
    opt_o = torch.optim.SGD(oracle.parameters(), lr=0.2)
    expected = []
    for step, (x, y) in enumerate(data):
        opt_o.zero_grad()
        nn.functional.cross_entropy(oracle(x), y).backward()
        expected.append(torch.nn.utils.get_total_norm([p.grad for p in oracle.parameters()]).item())
        if step != 2:  # the step the scaler will skip
            opt_o.step()

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradTracker(model, db=db_path) as tracker:
        tracker.attach(opt, scaler=scaler)
        _amp_loop(model, opt, scaler, data, poison_step=2)
    assert scaler.get_scale() == 2.0**9  # the scaler did see the inf and backed off

    steps = _rows(db_path, "SELECT step, total_norm, skipped, first_nonfinite_layer FROM steps ORDER BY step")
    assert [(s, k) for s, _, k, _ in steps] == [(0, 0), (1, 0), (2, 1), (3, 0)]
    assert steps[2][3] == 0 and steps[2][1] == float("inf")  # layer 0 flagged
    finite = [(s, n) for s, n, k, _ in steps if not k]
    assert [n for _, n in finite] == pytest.approx([expected[s] for s, _ in finite], rel=1e-5)
    assert _rows(db_path, "SELECT step, layer_id, has_inf FROM nonfinite") == [(2, 0, 1)]
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert "step" not in vars(scaler)  # finish() detached the wrapper


def test_skip_policy_under_attach_makes_the_optimizer_step_a_no_op(db_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    data = _data(3)
    with GradTracker(model, db=db_path, nonfinite="skip") as tracker:
        tracker.attach(opt)
        for step, (x, y) in enumerate(data):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 1:
                model[2].bias.grad[0] = float("nan")
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            unchanged = all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
            assert unchanged == (step == 1)  # AdamW's momentum and weight decay did not move anything
    assert _rows(db_path, "SELECT step, skipped FROM steps ORDER BY step") == [(0, 0), (1, 1), (2, 0)]


def test_attach_rejects_a_non_optimizer(db_path):
    with GradTracker(_model(), db=db_path) as tracker:
        with pytest.raises(ValueError, match="Optimizer"):
            tracker.attach(object())


@pytest.mark.parametrize("every", [1, 2])  # step 3 is logged with every=1, not with every=2
def test_manual_step_with_scaler_records_the_steps_the_scaler_skips(db_path, every):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    skipped_by_scaler = []  # the oracle: did GradScaler call optimizer.step()?
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append(1))
    with GradTracker(model, db=db_path, every=every) as tracker:
        for step, (x, y) in enumerate(_data(5)):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if step == 3:
                model[2].weight.grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            tracker.step(scaler=scaler)
            before = len(calls)
            scaler.step(opt)
            scaler.update()
            skipped_by_scaler.append(len(calls) == before)
    assert skipped_by_scaler == [False, False, False, True, False]
    steps = _rows(db_path, "SELECT step, skipped, first_nonfinite_layer FROM steps ORDER BY step")
    logged = [s for s in range(5) if s % every == 0 or skipped_by_scaler[s]]
    assert [s for s, _, _ in steps] == logged
    assert [(s, k) for s, k, _ in steps] == [(s, int(skipped_by_scaler[s])) for s in logged]
    assert dict((s, f) for s, _, f in steps)[3] == 2  # model[2].weight is layer 2
    assert _rows(db_path, "SELECT step, layer_id, has_inf FROM nonfinite") == [(3, 2, 1)]


def test_manual_step_with_a_disabled_scaler_records_nothing_as_skipped(db_path):
    model = _model()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with GradTracker(model, db=db_path) as tracker:
        x, y = _data(1)[0]
        nn.functional.cross_entropy(model(x), y).backward()
        model[0].bias.grad[0] = float("nan")
        tracker.step(scaler=scaler)  # no scaler in force: the optimizer will step on these NaNs
    assert _rows(db_path, "SELECT skipped, nonfinite_count FROM steps") == [(0, 1)]


@pytest.mark.parametrize("fused", [False, True])
def test_clipping_under_a_grad_scaler_is_clip_grad_norm_on_the_unscaled_gradients(db_path, fused):
    data = _data(4)
    oracle = _model()
    opt_o = torch.optim.Adam(oracle.parameters(), lr=0.05)
    for x, y in data:
        opt_o.zero_grad()
        nn.functional.cross_entropy(oracle(x), y).backward()
        torch.nn.utils.clip_grad_norm_(oracle.parameters(), 0.5)
        opt_o.step()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        tracker.attach(opt, scaler=scaler)
        _amp_loop(model, opt, scaler, data, poison_step=None)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert _rows(db_path, "SELECT count(*), sum(clipped) FROM steps") == [(4, 4)]


def test_one_scaler_shared_by_two_trackers_survives_either_being_removed(db_path):
    # A GAN: two models, two optimizers, two trackers, one GradScaler. Removing the attachment made second
    # used to delete the scaler's wrapper of the first too, which then missed the scaler's skips.
    models = [_model(), _model()]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trackers = [GradTracker(m, db=db_path, run=f"t{i}") for i, m in enumerate(models)]
    handles = [t.attach(o, scaler=scaler) for t, o in zip(trackers, opts, strict=True)]
    for it, (x, y) in enumerate(_data(6)):
        if it == 2:
            handles[0].remove()  # the one wrapped first, under the other's wrapper
        for k, (m, o) in enumerate(zip(models, opts, strict=True)):
            o.zero_grad()
            scaler.scale(nn.functional.cross_entropy(m(x), y)).backward()
            if it == 4 and k == 1:
                m[0].weight.grad[0, 0] = float("inf")
            scaler.step(o)
        scaler.update()
    for t in trackers:
        t.finish()
    assert "step" not in vars(scaler)  # both gone: the class's own method again
    rows = _rows(db_path, "SELECT r.name, s.step, s.skipped FROM steps s JOIN runs r ON r.id = s.run_id")
    assert [(s, k) for n, s, k in rows if n == "t0"] == [(0, 0), (1, 0)]
    assert [(s, k) for n, s, k in rows if n == "t1"] == [(s, int(s == 4)) for s in range(6)]


def _split(model):
    """Muon-style: the matrices to one optimizer, the rest (biases) to another."""
    return [p for p in model.parameters() if p.ndim == 2], [p for p in model.parameters() if p.ndim != 2]


def _oracle_steps(model, opts, data, max_norm):
    """The loop those optimizers run with one clip_grad_norm_ per backward; its global norms."""
    totals = []
    for x, y in data:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        totals.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        for o in opts:
            o.step()
    return totals


def test_several_optimizers_on_one_model_make_one_step_each_round(db_path):
    # Muon for the matrices and AdamW for the rest, say: one measurement and one clip per round, before the
    # first optimizer steps; both then step on the clipped gradients, as after one clip_grad_norm_ call.
    data = _data(4)
    oracle, model = _model(), _model()

    def optimizers(m):
        matrices, rest = _split(m)
        return [torch.optim.SGD(matrices, lr=0.2, momentum=0.9), torch.optim.AdamW(rest, lr=0.05)]

    totals = _oracle_steps(oracle, optimizers(oracle), data, 0.3)
    opts = optimizers(model)
    with GradTracker(model, db=db_path, clip="norm:0.3") as tracker:
        for o in opts:
            tracker.attach(o)
        for x, y in data:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for o in opts:
                o.step()
        assert tracker.step_count == 4
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    steps = _rows(db_path, "SELECT step, total_norm FROM steps ORDER BY step")
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    assert [n for _, n in steps] == pytest.approx(totals, rel=1e-6)


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_a_scaler_overflow_under_a_manual_step_is_the_scalers_skip_whatever_the_policy(db_path, nonfinite):
    # GradScaler overflows are routine (its scale is calibrated by them): with scaler= the step is recorded
    # as skipped, as under attach(scaler=), instead of raising NonFiniteGradientError (policy raise).
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradTracker(model, db=db_path, nonfinite=nonfinite) as tracker:
        for step, (x, y) in enumerate(_data(3)):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if step == 1:
                model[2].weight.grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            stats = tracker.step(scaler=scaler)
            assert stats.skipped == (step == 1)
            scaler.step(opt)
            scaler.update()
    assert scaler.get_scale() == 2.0**9
    assert _rows(db_path, "SELECT step, skipped FROM steps ORDER BY step") == [(0, 0), (1, 1), (2, 0)]


@pytest.mark.parametrize("order", ["matrices-first", "rest-first"])
def test_an_optimizer_stepping_every_other_iteration_never_steps_unclipped(db_path, order):
    # Called first on the iterations it steps, it used to join the round the other opened the iteration
    # before, and stepped on unclipped gradients.
    data = _data(6)

    def split(model):
        return [torch.optim.SGD(ps, lr=0.2) for ps in _split(model)]

    def loop(model, opts, clip):
        for it, (x, y) in enumerate(data):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            clip(model)
            for k in [0, 1] if order == "matrices-first" else [1, 0]:
                if k == 0 or it % 2 == 0:  # the rest's optimizer steps every other iteration
                    opts[k].step()

    oracle, model = _model(), _model()
    loop(oracle, split(oracle), lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.3))
    opts = split(model)
    with GradTracker(model, db=db_path, clip="norm:0.3") as tracker:
        for o in opts:
            tracker.attach(o)
        loop(model, opts, lambda m: None)
        assert tracker.step_count == 6
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("fused", [False, True])
def test_several_optimizers_sharing_a_grad_scaler_are_measured_unscaled(db_path, fused):
    # GradScaler.step unscales only its own optimizer's gradients: the step measured before the first of
    # them used to see the others' still scaled (1024 times too large here).
    data = _data(4)
    oracle, model = _model(), _model()
    totals = _oracle_steps(oracle, [torch.optim.Adam(ps, lr=0.05) for ps in _split(oracle)], data, 0.5)
    opts = [torch.optim.Adam(ps, lr=0.05, fused=fused) for ps in _split(model)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        for o in opts:
            tracker.attach(o, scaler=scaler)
        for x, y in data:
            model.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            for o in opts:
                scaler.step(o)
            scaler.update()
    assert [n for (n,) in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")] == pytest.approx(
        totals, rel=1e-5
    )
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_fused_optimizer_unscaled_by_the_user_still_has_its_skips_recorded(db_path):
    # The usual scaler.unscale_(opt) before scaler.step(opt): GradScaler then passes the fused optimizer
    # found_inf but no grad_scale; the hook used to take that for "no scaler" and record the skip as a step.
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with GradTracker(model, db=db_path) as tracker:
        tracker.attach(opt, scaler=scaler)
        _amp_loop(model, opt, scaler, _data(3), poison_step=1, unscale_first=True)
    assert scaler.get_scale() == 2.0**7
    assert _rows(db_path, "SELECT step, skipped FROM steps ORDER BY step") == [(0, 0), (1, 1), (2, 0)]


@pytest.mark.parametrize("idle_first", [False, True])
def test_an_attached_optimizer_holding_no_gradients_makes_no_step(db_path, idle_first):
    # An expert this batch did not use: its optimizer's step updates nothing. It used to open a step of
    # its own, measuring the already clipped gradients again (every other row 0.5, steps counted twice).
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(used=nn.Linear(5, 3), idle=nn.Linear(5, 3)))
    opts = [
        torch.optim.SGD(model["used"].parameters(), lr=0.1),
        torch.optim.SGD(model["idle"].parameters(), lr=0.1),
    ]
    if idle_first:
        opts.reverse()
    totals = []
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        for o in opts:
            tracker.attach(o)
        for x, y in _data(3):
            model.zero_grad()
            nn.functional.cross_entropy(model["used"](x), y).backward()
            totals.append(torch.nn.utils.get_total_norm([p.grad for p in model["used"].parameters()]).item())
            for o in opts:
                o.step()
    assert [n for (n,) in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")] == pytest.approx(
        totals, rel=1e-6
    )


def test_a_closure_step_is_refused_with_how_to_track_it(db_path):
    # The closure computes the gradients inside step(), after the hook: the hook would measure the previous
    # ones, and its clipping would never reach the update (LBFGS ran unclipped, recording norm 0 first).
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    x, y = _data(1)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        handle = tracker.attach(opt)
        with pytest.raises(RuntimeError, match=r"LBFGS.step\(closure\) computes the gradients inside step"):
            opt.step(closure)
        handle.remove()
        opt.step(closure)  # detached: the user's own loop, untouched
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(0,)]


@pytest.mark.parametrize("fused", [False, True])
def test_a_round_the_shared_grad_scaler_skips_for_every_optimizer_is_recorded_as_skipped(db_path, fused):
    # Several optimizers, one GradScaler: it skips each optimizer whose own gradients hold inf/NaN. A round
    # where it skipped them all used to be recorded as a step taken; one where another optimizer still
    # stepped is a step taken (its non-finite layer recorded). Oracle: did any parameter change?
    model = _model()
    opts = [torch.optim.Adam(ps, lr=0.05, fused=fused) for ps in _split(model)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    poison = {1: [model[0].weight], 2: [model[0].weight, model[2].bias]}  # one optimizer, then both
    assert any(p is model[0].weight for p in opts[0].param_groups[0]["params"])  # a matrix
    assert any(p is model[2].bias for p in opts[1].param_groups[0]["params"])  # the rest
    changed = []
    with GradTracker(model, db=db_path) as tracker:
        for o in opts:
            tracker.attach(o, scaler=scaler)
        for step, (x, y) in enumerate(_data(4)):
            model.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            for p in poison.get(step, []):
                p.grad.view(-1)[0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            for o in opts:
                scaler.step(o)
            scaler.update()
            after = list(model.parameters())
            changed.append(any(not torch.equal(a, p) for a, p in zip(before, after, strict=True)))
        assert tracker.step_count == 4
    assert changed == [True, True, False, True]
    assert _rows(db_path, "SELECT step, skipped FROM steps ORDER BY step") == [
        (s, int(not c)) for s, c in enumerate(changed)
    ]
    assert _rows(db_path, "SELECT DISTINCT step FROM nonfinite ORDER BY step") == [(1,), (2,)]


def test_step_by_hand_while_attached_is_refused_before_it_clips_twice(db_path):
    # Both styles of the README at once: the hook measures and clips at opt.step(), so a step() by hand
    # too recorded every optimizer step twice, the second time the already clipped gradients.
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ((x, y),) = _data(1)
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        handle = tracker.attach(opt)
        nn.functional.cross_entropy(model(x), y).backward()
        want = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        with pytest.raises(RuntimeError, match=r"attached to an optimizer.*twice.*handle\.remove\(\)"):
            tracker.step()
        opt.step()  # the hook: one step, on the unclipped gradients
        handle.remove()
        tracker.step()  # by hand, once detached: allowed
    recorded = _rows(db_path, "SELECT step, total_norm FROM steps ORDER BY step")
    assert recorded[0] == (0, pytest.approx(want, rel=1e-6))


def test_attach_on_a_finished_tracker_is_refused_at_once(db_path):
    model = _model()
    tracker = GradTracker(model, db=db_path)
    tracker.finish()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.attach(torch.optim.SGD(model.parameters(), lr=0.1))  # not at the first opt.step()
