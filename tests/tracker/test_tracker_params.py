"""Tied, frozen and gradient-less parameters: what is measured, what is registered, what is counted."""

import copy
import json
import math
import warnings

import pytest
import torch
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker


class TiedModel(nn.Module):
    """Embedding and output projection share one weight (as in GPT-2); `frozen` never trains; `unused` is
    never part of the forward pass, so its grad stays None."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.hidden = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.hidden(self.frozen(self.embed(tokens)))))


def test_tied_frozen_and_unused_parameters(db_path):
    model = TiedModel()
    tokens = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(1))
    with GradTracker(model, db=db_path, clip="norm:0.01") as tracker:
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        # The oracle: torch's own total over the unique parameters that have a gradient.
        with_grad = [p for p in model.parameters() if p.grad is not None]
        expected_total = torch.nn.utils.get_total_norm([p.grad for p in with_grad]).item()
        expected = {
            n: torch.linalg.vector_norm(p.grad).item()
            for n, p in model.named_parameters()
            if p.grad is not None
        }
        stats = tracker.step()
        clipped_total = torch.nn.utils.get_total_norm([p.grad for p in with_grad]).item()
    assert stats.total_norm == pytest.approx(expected_total, rel=1e-6)
    assert clipped_total == pytest.approx(0.01, rel=1e-4)  # the tied weight was scaled once, not twice

    layers = _rows(db_path, "SELECT id, name, trainable FROM layers ORDER BY id")
    names = [r[1] for r in layers]
    assert names == [
        "embed.weight",
        "frozen.weight",
        "frozen.bias",
        "hidden.weight",
        "hidden.bias",
        "unused.weight",
        "unused.bias",
    ]  # head.weight is the embedding's tensor: one layer
    assert {r[1]: r[2] for r in layers}["frozen.weight"] == 0 and {r[1]: r[2] for r in layers}[
        "hidden.bias"
    ] == 1
    config = json.loads(_rows(db_path, "SELECT config FROM runs")[0][0])
    assert config["_gradwatch"]["tied"] == {"head.weight": "embed.weight"}

    recorded = dict(
        _rows(db_path, "SELECT l.name, g.norm FROM grad_norms g JOIN layers l ON l.id = g.layer_id")
    )
    # Frozen: never measured; unused: no gradient at this step, so no row (NULL when read per step).
    assert set(recorded) == {"embed.weight", "hidden.weight", "hidden.bias"}
    for name, norm in recorded.items():
        assert norm == pytest.approx(expected[name], rel=1e-5)
    assert _rows(db_path, "SELECT total_norm FROM steps")[0][0] == pytest.approx(expected_total, rel=1e-6)


def test_gradient_appearing_later_is_measured_from_then_on(db_path):
    model = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 1)})
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with GradTracker(model, db=db_path) as tracker:
        model["a"](x).sum().backward()  # b has no grad yet
        tracker.step()
        model.zero_grad()
        model["b"](model["a"](x)).sum().backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        stats = tracker.step()
    assert stats.total_norm == pytest.approx(expected, rel=1e-6)
    counts = _rows(db_path, "SELECT step, count(*) FROM grad_norms GROUP BY step ORDER BY step")
    assert counts == [(0, 2), (1, 4)]


@pytest.mark.parametrize("every", [1, 3])
def test_parameters_unfrozen_later_are_measured_and_clipped_from_then_on(db_path, every):
    # Fine-tuning: a backbone frozen when the tracker is made, unfrozen at step 2. From then on the tracker
    # must clip like torch's clip_grad_norm_ over the model's parameters, and record the new layers.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    oracle = copy.deepcopy(model)
    for m in (model, oracle):
        m[0].requires_grad_(False)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_oracle = torch.optim.SGD(oracle.parameters(), lr=0.1)
    totals = []
    with GradTracker(model, db=db_path, clip="norm:0.5", every=every, extra_stats=True) as tracker:
        for step in range(5):
            if step == 2:
                for m in (model, oracle):
                    m[0].requires_grad_(True)
            for m, o in ((model, opt), (oracle, opt_oracle)):
                o.zero_grad()
                (m(x) ** 2).sum().backward()
            stats = tracker.step()
            totals.append(torch.nn.utils.clip_grad_norm_(oracle.parameters(), 0.5).item())
            opt.step()
            opt_oracle.step()
            assert float(stats.total_norm) == pytest.approx(totals[-1], rel=1e-5)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert _rows(db_path, "SELECT id, trainable FROM layers ORDER BY id") == [(0, 1), (1, 1), (2, 1), (3, 1)]
    counts = dict(_rows(db_path, "SELECT step, count(*) FROM grad_norms GROUP BY step"))
    assert counts == {s: 2 if s < 2 else 4 for s in range(5) if s % every == 0}
    recorded = [t for (t,) in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")]
    assert recorded == pytest.approx([t for s, t in enumerate(totals) if s % every == 0], rel=1e-5)
    # Every clip decision, the buffered ones of unlogged steps included, survived the change of layout.
    events = [n for (n,) in _rows(db_path, "SELECT norm_before FROM clip_events ORDER BY step")]
    assert events == pytest.approx(totals, rel=1e-5)


def test_writer_rank_outside_the_process_group_is_refused_before_anything_is_written(tmp_path):
    # Without a process group there is one process, rank 0: rank=1 would mean nobody ever writes.
    db = tmp_path / "gradwatch.db"
    with pytest.raises(ValueError, match=r"rank=1 but there is 1 process \(ranks 0 to 0\)"):
        GradTracker(nn.Linear(2, 2), db=str(db), rank=1)
    assert not db.exists()


def _swap_without_hooks(linear: nn.Linear) -> None:
    # What fully_shard (FSDP2) does: new Parameter objects written into _parameters, past the registration
    # hooks that tell the tracker the model changed.
    fresh = nn.Linear(linear.in_features, linear.out_features)
    linear._parameters["weight"], linear._parameters["bias"] = fresh.weight, fresh.bias


def test_parameters_replaced_after_the_tracker_was_made_are_an_error_not_an_empty_record(db_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(
        RuntimeError, match=r"2 of the 4 parameters .* \(2\.weight, 2\.bias\).*after wrapping"
    ):
        with GradTracker(model, db=db_path) as tracker:
            _swap_without_hooks(model[2])
            model(torch.randn(3, 4)).sum().backward()
            tracker.step()
    assert _rows(db_path, "SELECT status, count(*) FROM runs") == [("failed", 1)]
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(0,)]


def test_the_replaced_check_is_not_spent_by_an_unused_branch(db_path):
    # It used to run once, the first time a gradient was missing: an auxiliary layer unused at step 0 spent
    # it, and parameters replaced later were silently never measured again.
    model = nn.ModuleDict(dict(body=nn.Linear(4, 4), aux=nn.Linear(4, 1), head=nn.Linear(4, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # (holds the parameters of the start)
    with pytest.raises(RuntimeError, match=r"2 of the 6 parameters .* \(head\.weight, head\.bias\)"):
        with GradTracker(model, db=db_path) as tracker:
            for step in range(4):
                if step == 2:
                    _swap_without_hooks(model["head"])
                opt.zero_grad(set_to_none=True)
                model["head"](model["body"](torch.randn(3, 4))).sum().backward()  # aux: no gradient
                tracker.step()
                opt.step()
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(2,)]


def test_a_head_added_or_a_module_swapped_later_is_measured_and_clipped_like_torch(db_path):
    # Fine-tuning code adds a head or swaps a module after the tracker exists; they used to be left out of
    # the measurement, the global norm and the clipping without a word.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    oracle = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 4, generator=g) * 3 for _ in range(6)]
    totals = []
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        for step, x in enumerate(batches):
            for m in (model, oracle):
                if step == 2:  # a new head: the model's ids go on from the last layer
                    torch.manual_seed(7)
                    m.append(nn.Linear(3, 2))
                if step == 4:  # the first layer swapped: same names, new tensors
                    torch.manual_seed(8)
                    m[0] = nn.Linear(4, 8)
                m.zero_grad(set_to_none=True)
                m(x).pow(2).sum().backward()
            totals.append(torch.nn.utils.clip_grad_norm_(oracle.parameters(), 0.5).item())
            stats = tracker.step()
            for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad)
            assert float(stats.total_norm) == pytest.approx(totals[-1], rel=1e-5)
            with torch.no_grad():  # (one SGD step on both, so the later steps differ)
                for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
                    p -= 0.1 * p.grad
                    q -= 0.1 * q.grad
    layers = _rows(db_path, "SELECT id, name, shape FROM layers ORDER BY id")
    assert layers == [(0, "0.weight", "[8, 4]"), (1, "0.bias", "[8]"), (2, "2.weight", "[3, 8]"),
                      (3, "2.bias", "[3]"), (4, "3.weight", "[2, 3]"), (5, "3.bias", "[2]")]  # fmt: skip
    per_step = _rows(db_path, "SELECT step, count(*) FROM grad_norms GROUP BY step ORDER BY step")
    assert per_step == [(0, 4), (1, 4), (2, 6), (3, 6), (4, 6), (5, 6)]
    assert [n for (n,) in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")] == pytest.approx(
        totals, rel=1e-5
    )


def test_assigning_the_same_parameter_again_changes_nothing(db_path):
    # Weights tied again in forward (self.head.weight = self.embed.weight every call) must not make the
    # tracker look at the model again: no new layers, nothing re-planned.
    model = TiedModel()
    with GradTracker(model, db=db_path) as tracker:
        plan = tracker._plan
        for _ in range(2):
            model.head.weight = model.embed.weight
            model(torch.tensor([[1, 2, 3]])).sum().backward()
            tracker.step()
        assert tracker._plan is plan and not tracker._watch.changed
    assert _rows(db_path, "SELECT count(*) FROM layers") == [(len(list(TiedModel().named_parameters())),)]


def test_an_unused_branch_is_not_mistaken_for_replaced_parameters(db_path):
    model = TiedModel()
    with GradTracker(model, db=db_path) as tracker:
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            model(torch.tensor([[1, 2, 3]])).sum().backward()
            tracker.step()  # `unused` has no gradient: recorded as missing, no error
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(2,)]


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double"])
def test_a_model_cast_after_the_tracker_was_made_is_measured_in_its_new_dtype(db_path, cast):
    # 256x256 = 65,536 elements: a tensor the CPU plan reads with dot() while it is float32. After .half() a
    # gradient of norm ~300 has a sum of squares beyond float16's 65,504: it must still read as finite.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 2))
    with GradTracker(model, db=db_path, extra_stats=("weight_norm",)) as tracker:
        getattr(model, cast)()
        for p in model.parameters():
            p.grad = (torch.rand(p.shape) + 0.6).to(p.dtype)  # |g| ~ 1.1: the big layer's norm ~ 280
        stats = tracker.step()
    expected = [torch.linalg.vector_norm(p.grad.double()).item() for p in model.parameters()]
    assert expected[0] > 256
    got = [n for (n,) in _rows(db_path, "SELECT norm FROM grad_norms ORDER BY layer_id")]
    rel = 1e-2 if cast != "double" else 1e-6
    assert got == pytest.approx(expected, rel=rel)
    assert stats.total_norm == pytest.approx(sum(e * e for e in expected) ** 0.5, rel=rel)
    weights = [w for (w,) in _rows(db_path, "SELECT weight_norm FROM grad_stats ORDER BY layer_id")]
    assert weights == pytest.approx(
        [torch.linalg.vector_norm(p.double()).item() for p in model.parameters()], rel=rel
    )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    assert _rows(db_path, "SELECT DISTINCT dtype FROM layers") == [(dtype,)]  # the layers say so too


def test_a_part_of_the_model_cast_to_float16_later_is_not_read_as_inf(db_path):
    # Only the head is cast after the tracker was made (the first parameter, which stands for the layout,
    # is not): its finite gradient, whose sum of squares is beyond float16's range, must stay finite.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(256, 256))
    with GradTracker(model, db=db_path, nonfinite="skip") as tracker:
        model[1].half()
        for p in model.parameters():
            p.grad = (torch.rand(p.shape) + 0.6).to(p.dtype)
        stats = tracker.step()
    expected = [torch.linalg.vector_norm(p.grad.double()).item() for p in model.parameters()]
    assert expected[2] > 256 and not stats.skipped
    got = [n for (n,) in _rows(db_path, "SELECT norm FROM grad_norms ORDER BY layer_id")]
    assert got == pytest.approx(expected, rel=1e-3)
    assert _rows(db_path, "SELECT COUNT(*) FROM nonfinite") == [(0,)]


def test_a_part_of_the_model_cast_later_is_recorded_with_its_new_dtype(db_path):
    # The first parameter stands for the layout on the training thread, and a float16 part makes no kernel
    # fail: the watch's poll is what notices the cast, and the layer rows then say float16.
    from polling import wait_for

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with GradTracker(model, db=db_path) as tracker:
        model(torch.randn(3, 4)).sum().backward()
        tracker.step()
        model[1].half()
        assert wait_for(lambda: tracker._watch.changed, timeout=15)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        tracker.step()
    rows = _rows(db_path, "SELECT name, dtype FROM layers ORDER BY id")
    assert rows == [
        ("0.weight", "float32"),
        ("0.bias", "float32"),
        ("1.weight", "float16"),
        ("1.bias", "float16"),
    ]
    norms = _rows(db_path, "SELECT layer_id, norm FROM grad_norms WHERE step = 1 ORDER BY layer_id")
    assert [n for _, n in norms] == pytest.approx([4.0, 2.0, math.sqrt(8), math.sqrt(2)])


def test_a_part_moved_away_and_back_between_steps_costs_no_sync(db_path, monkeypatch):
    # CPU offload patterns move tensors between steps and back before the next: the watch's poll sees
    # another layout, which must not write out the buffered steps (a host sync) nor rescan the model.
    from polling import wait_for

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with GradTracker(model, db=db_path, every=1000) as tracker:
        model(torch.randn(3, 4)).sum().backward()
        tracker.step()
        drains = []
        monkeypatch.setattr(tracker, "_drain_pending", lambda: drains.append(1))
        model[1].double()
        assert wait_for(lambda: tracker._watch.changed, timeout=15)
        model[1].float()
        tracker.step()
        assert drains == [] and len(tracker._pending) == 1 and not tracker._watch.changed
        monkeypatch.undo()
    assert _rows(db_path, "SELECT step FROM steps") == [(0,)]  # (step 1 unlogged: every=1000)
    assert _rows(db_path, "SELECT DISTINCT dtype FROM layers") == [("float32",)]


def test_update_ratio_across_a_cast_to_complex_between_steps(db_path):
    # The weights are copied at a logged step and subtracted from the weights at the next one; a cast in
    # between (to complex here) used to raise inside step(): "result type ComplexFloat can't be cast".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: complex modules are a new feature
        with GradTracker(model, db=db_path, extra_stats=("update_ratio",)) as tracker:
            model(torch.randn(3, 4)).sum().backward()
            tracker.step()
            before = [p.detach().clone() for p in model.parameters()]
            model.to(torch.complex64)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5j)  # the update the ratio of step 0 measures (with the cast's, exact here)
                    p.grad = torch.ones_like(p)
            tracker.step()
    expected = [
        (torch.linalg.vector_norm(p.detach() - b) / torch.linalg.vector_norm(b)).item()
        for p, b in zip(model.parameters(), before, strict=True)
    ]
    got = _rows(db_path, "SELECT update_ratio FROM grad_stats WHERE step = 0 ORDER BY layer_id")
    assert [r for (r,) in got] == pytest.approx(expected, rel=1e-6)


def test_a_parameter_subset_that_changes_every_step_keeps_a_bounded_cache(db_path):
    # Mixture of experts: which parameters have a gradient changes from step to step.
    experts = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(12))
    with GradTracker(experts, db=db_path, every=1000) as tracker:
        for k in range(300):
            for i, e in enumerate(experts):
                e.weight.grad = torch.ones(2, 2) if (k >> i) & 1 or i == 11 else None
            tracker.step()
            assert len(tracker._subset_plans) <= 64


def test_a_step_without_any_gradient_warns_once(db_path):
    model = nn.Linear(4, 2)
    with GradTracker(model, db=db_path) as tracker:
        with pytest.warns(
            UserWarning, match=r"none of the 2 parameters has a gradient.*before optimizer\.zero_grad"
        ):
            tracker.step()  # the classic slip: after zero_grad(), or before backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tracker.step()  # said once
            model(torch.randn(3, 4)).sum().backward()
            tracker.step()
    assert _rows(db_path, "SELECT step, total_norm > 0 FROM steps ORDER BY step") == [(0, 0), (1, 0), (2, 1)]


@pytest.mark.parametrize("rows", [10, 100_000])  # the large one is read with dot() on the CPU
def test_sparse_gradients_are_a_clear_error_naming_the_layer(db_path, rows):
    # torch's own clip_grad_norm_ fails on them with a dispatcher error; ours says what and what to do.
    model = nn.ModuleDict({"emb": nn.Embedding(rows, 4, sparse=True), "out": nn.Linear(4, 1)})
    with pytest.raises(NotImplementedError):
        model["out"](model["emb"](torch.tensor([1, 2]))).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with GradTracker(model, db=db_path) as tracker:
        with pytest.raises(TypeError, match=r"sparse gradients .*\(emb\.weight\).*sparse=False"):
            tracker.step()


def test_a_module_deleted_later_is_no_longer_measured(db_path):
    # `del model.aux` fires no registration hook: the first step its parameters have no gradient (the
    # optimizer's zero_grad() cleared them), the tracker sees the names are gone and takes the model as is.
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(body=nn.Linear(4, 4), aux=nn.Linear(4, 4), head=nn.Linear(4, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    totals = []
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        for step in range(4):
            if step == 2:
                del model["aux"]
            opt.zero_grad(set_to_none=True)
            h = model["body"](torch.randn(3, 4))
            h = model["aux"](h) if "aux" in model else h
            model["head"](h).pow(2).sum().backward()
            totals.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
            tracker.step()
            opt.step()
    per_step = _rows(db_path, "SELECT step, count(*) FROM grad_norms GROUP BY step ORDER BY step")
    assert per_step == [(0, 6), (1, 6), (2, 4), (3, 4)]
    recorded = [n for (n,) in _rows(db_path, "SELECT total_norm FROM steps ORDER BY step")]
    assert recorded == pytest.approx(totals, rel=1e-6)
    assert _rows(db_path, "SELECT count(*) FROM layers") == [(6,)]  # its rows stay, as its norms do


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


@pytest.mark.parametrize("change", ["insert", "delete"])
def test_a_modulelist_insert_or_delete_is_taken_in(db_path, change):
    # ModuleList.insert and `del blocks[i]` write the module dict directly: no registration hook fires, and
    # the names after the change are renumbered. The inserted block used to be left out of the norm and
    # the clip; the deletion raised "replaced after the tracker was created".
    from polling import wait_for

    torch.manual_seed(0)
    model = _Blocks()
    oracle = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with GradTracker(model, db=db_path, clip="norm:0.5") as tracker:
        for step in range(4):
            if step == 2:
                for m in (model, oracle):
                    torch.manual_seed(5)
                    if change == "insert":
                        m.blocks.insert(0, nn.Linear(4, 4))
                    else:
                        del m.blocks[1]
                # Seen by the watch's poll within seconds (model.zero_grad() no longer reaches a deleted
                # block, so its stale gradients are not missing ones the step would notice by itself).
                assert wait_for(lambda: tracker._watch.changed, timeout=15)
            x = torch.randn(3, 4, generator=g)
            for m in (model, oracle):
                m.zero_grad(set_to_none=True)
                m(x).pow(2).sum().mul(10).backward()
            want = torch.nn.utils.clip_grad_norm_(oracle.parameters(), 0.5).item()
            assert float(tracker.step().total_norm) == pytest.approx(want, rel=1e-6), step
            for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad)
    per_step = _rows(db_path, "SELECT step, count(*) FROM grad_norms GROUP BY step ORDER BY step")
    n = 8 if change == "insert" else 4
    assert per_step == [(0, 6), (1, 6), (2, n), (3, n)]


def test_state_dict_takes_in_an_insert_made_since_the_last_step(db_path):
    model = _Blocks()
    with GradTracker(model, db=db_path) as tracker:
        model(torch.ones(1, 4)).sum().backward()
        tracker.step()
        model.blocks.insert(0, nn.Linear(4, 4))
        tracker.state_dict()  # before the poll could see it
    assert _rows(db_path, "SELECT count(*) FROM layers") == [(8,)]


@pytest.mark.parametrize("change", ["unfreeze", "add-head", "cast"])
def test_a_model_change_while_another_process_holds_the_write_lock_neither_waits_nor_fails(db_path, change):
    # The layers rows a change needs were written on the training thread: step() waited for the lock, then
    # raised DatabaseLocked into training, and the layers table stayed wrong. They now go through the writer
    # thread, which waits for the lock like every other row. (The lock: an open BEGIN IMMEDIATE elsewhere.)
    import sqlite3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    x = torch.randn(3, 4)

    def train(steps):
        for _ in range(steps):
            model.zero_grad()
            out = model(x.to(model[0].weight.dtype))
            (model.head(out) if hasattr(model, "head") else out).square().mean().backward()
            tracker.step()

    tracker = GradTracker(model, db=db_path)
    train(2)
    tracker.flush()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        if change == "unfreeze":
            model[2].weight.requires_grad_(True)
        elif change == "add-head":
            model.add_module("head", nn.Linear(2, 2))
        else:
            model.double()
        train(3)  # the lock is held throughout: no DatabaseLocked, no waiting for it to time out
    finally:
        other.rollback()
        other.close()
    train(1)
    tracker.finish()
    # The oracle: what the model holds now, as named_parameters() names it.
    params = list(model.named_parameters())
    expected = [(n, str(p.dtype).removeprefix("torch."), int(p.requires_grad)) for n, p in params]
    assert _rows(db_path, "SELECT name, dtype, trainable FROM layers ORDER BY id") == expected
    assert _rows(db_path, "SELECT count(*) FROM steps") == [(6,)]
    trained = sum(p.requires_grad for _, p in params)
    assert _rows(db_path, "SELECT count(DISTINCT layer_id) FROM grad_norms WHERE step = 5") == [(trained,)]


@pytest.mark.parametrize("numel", [10, 40_000])  # the fused kernel's tensors, and dot()'s
def test_a_part_of_the_model_cast_to_float64_later_is_measured_and_clipped_in_float64(db_path, numel):
    # Only `b` is cast (model.head.double(), say); the first parameter, which stands for the layout, is not.
    # A finite float64 gradient of norm ~2e42 is beyond float32: read through the float32 plan it was inf
    # (the fused kernel refused it outright for a small tensor). The oracle: clip_grad_norm_ on copies.
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(numel))
    with GradTracker(model, db=db_path, clip="norm:1.0") as tracker:
        model.a.grad, model.b.grad = torch.ones(3), torch.ones(numel)
        tracker.step()  # planned for float32
        model.b.data = model.b.data.double()
        model.a.grad = torch.ones(3)
        model.b.grad = torch.full((numel,), 1e40, dtype=torch.float64)
        reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for r, p in zip(reference, model.parameters(), strict=True):
            r.grad = p.grad.clone()
        expected_total = torch.nn.utils.clip_grad_norm_(reference, 1.0).item()
        stats = tracker.step()
    assert stats.total_norm == pytest.approx(expected_total, rel=1e-12)
    torch.testing.assert_close(model.b.grad, reference[1].grad, rtol=1e-12, atol=0)
    norm_b = _rows(db_path, "SELECT norm FROM grad_norms WHERE step = 1 AND layer_id = 1")
    assert norm_b == [(pytest.approx(1e40 * numel**0.5, rel=1e-12),)]
    assert _rows(db_path, "SELECT COUNT(*) FROM nonfinite") == [(0,)]
    assert _rows(db_path, "SELECT name, dtype FROM layers ORDER BY id") == [
        ("a", "float32"),
        ("b", "float64"),
    ]


def test_complex128_gradients_are_measured_and_clipped_in_float64(db_path):
    # torch measures a complex128 tensor in float64: a finite norm of 2e40 (beyond float32) was read as inf,
    # flagged non-finite and left unclipped.
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(4, dtype=torch.complex128))
    grad = torch.full((4,), 1e40 + 0j, dtype=torch.complex128)
    reference = model.w.detach().clone().requires_grad_()
    reference.grad = grad.clone()
    expected_total = torch.nn.utils.clip_grad_norm_([reference], 1.0).item()
    with GradTracker(model, db=db_path, clip="norm:1.0", nonfinite="skip") as tracker:
        model.w.grad = grad.clone()
        stats = tracker.step()
    assert stats.total_norm == pytest.approx(expected_total, rel=1e-12) and not stats.skipped
    torch.testing.assert_close(model.w.grad, reference.grad, rtol=1e-12, atol=0)
    assert _rows(db_path, "SELECT COUNT(*) FROM nonfinite") == [(0,)]


@pytest.mark.parametrize("spec", ["norm:1.0", "layer:1.0", "agc:0.01", "zclip:2.5", "random:1-2"])
def test_a_non_finite_complex_gradient_is_left_untouched(db_path, spec):
    # Multiplying by 1 + 0j is not the identity for inf + 0j (it gives inf + nanj): the coefficient 1 of a
    # non-finite step must leave the gradients as they were, as the docs say, also complex ones.
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    model.v = nn.Parameter(torch.ones(2, dtype=torch.complex64))
    grads = [
        torch.tensor([math.inf + 0j, 1, 2], dtype=torch.complex64),
        torch.tensor([3 + 4j, 0], dtype=torch.complex64),
    ]
    with GradTracker(model, db=db_path, clip=spec) as tracker:
        model.w.grad, model.v.grad = (g.clone() for g in grads)
        tracker.step()
        after = [model.w.grad.clone(), model.v.grad.clone()]
    assert not after[0].imag.isnan().any()
    assert torch.equal(after[0], grads[0])
    if spec in ("norm:1.0", "zclip:2.5", "random:1-2"):  # global: the finite tensor is untouched too
        assert torch.equal(after[1], grads[1])


def test_value_clipping_of_complex_parameters_is_refused_before_anything_is_written(db_path):
    # torch's clip_grad_value_ refuses complex tensors from inside its kernel; the tracker used to accept
    # the spec and fail at the first step with "aminmax_cpu not implemented for 'ComplexFloat'".
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    model.b = nn.Parameter(torch.ones(2))
    model.frozen = nn.Parameter(torch.ones(2, dtype=torch.complex64), requires_grad=False)  # never clipped
    reference = model.w.detach().clone().requires_grad_()
    reference.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="not supported for complex"):
        torch.nn.utils.clip_grad_value_([reference], 0.1)  # the oracle refuses them too
    with pytest.raises(ValueError, match=r"complex parameters \(w\)\. Use norm:C"):
        GradTracker(model, db=db_path, clip="value:0.1")
    with pytest.raises(ValueError, match="complex parameters"):
        GradTracker(model, db=db_path, clip="value:0.1", enabled=False)  # checked alike when disabled
    assert not db_path.exists()
    model.w.requires_grad_(False)
    GradTracker(model, db=db_path, clip="value:0.1").finish()  # only real parameters are clipped: fine


@pytest.mark.parametrize("spec", ["norm:0.1", "layer:0.1", "agc:0.001", "random:0.1-0.2"])
def test_a_lazily_conjugated_complex_gradient_is_clipped(db_path, spec):
    # backward through p.conj() leaves p.grad.is_conj(): view_as_real refuses such a tensor (AGC raised),
    # and torch's own fused multiply does too. The oracle: the same tracker on the resolved gradient.
    def model_and_grad(resolve):
        torch.manual_seed(0)
        model = nn.Module()
        model.p = nn.Parameter(torch.randn(8, dtype=torch.complex64))
        (model.p.conj() * torch.randn(8, dtype=torch.complex64) * 100).real.sum().backward()
        if resolve:
            model.p.grad = model.p.grad.resolve_conj()
        return model

    lazy, resolved = model_and_grad(False), model_and_grad(True)
    assert lazy.p.grad.is_conj() and not resolved.p.grad.is_conj()
    with GradTracker(lazy, db=db_path, clip=spec) as tracker:
        stats = tracker.step()
    with GradTracker(resolved, db=db_path, clip=spec) as tracker:
        expected = tracker.step()
    assert stats.clipped and stats.coef == pytest.approx(expected.coef, rel=1e-6)
    torch.testing.assert_close(lazy.p.grad.resolve_conj(), resolved.p.grad)


def test_a_model_cast_to_complex_after_creation_is_refused_by_value_clipping_in_a_sentence(db_path):
    # (torch's "aminmax_cpu not implemented for 'ComplexFloat'" from inside step())
    model = nn.Linear(3, 2)
    with GradTracker(model, db=db_path, clip="value:1.0") as tracker:
        for p in model.parameters():  # (model.to(torch.complex64), without its warning on complex modules)
            p.data = p.data.to(torch.complex64)
            p.grad = torch.full(p.shape, 3 + 0j, dtype=torch.complex64)
        with pytest.raises(ValueError, match=r"complex parameters \(weight, bias\)"):
            tracker.step()
