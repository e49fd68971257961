"""Continuing a run from a checkpoint: GradTracker(resume=tracker.state_dict()).

The oracle is the same training run done without interruption: a run whose process is killed after its
checkpoint, then continued from that checkpoint in another process, must leave the same rows in the file
(and the same weights) as one that never stopped. The killed attempt is a real subprocess that dies with
os._exit, as a preempted job would: no finish(), no flush at exit.
"""

import copy
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from tracker import GradTracker
from tracker.clipping import parse_clip
from tracker.store import CannotResume, DatabaseNotFound, RunNotFound, Store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIP = "autoclip:50,window=8+noise(0.001)"  # stateful (history) and step-seeded noise
CHECKPOINT, KILLED_AFTER, END = 20, 36, 31  # the killed attempt ran past where the resumed one ends


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _trainee(momentum=0.0):
    model = _model()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)


def _train(tracker, model, opt, steps):
    for step in steps:
        x, y = _batch(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        tracker.step(loss=loss)
        opt.step()
        tracker.log({"acc": step / 100})


def _tracker(model, db, **kw):
    return GradTracker(model, db=db, run="resumable", clip=CLIP, extra_stats=True, handle_sigterm=False, **kw)


def _killed_attempt(db, checkpoint):
    """Run in a subprocess: train, save a checkpoint after CHECKPOINT steps, go on, then die unannounced."""
    model, opt = _trainee(momentum=0.9)
    tracker = _tracker(model, db)
    _train(tracker, model, opt, range(CHECKPOINT))
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "gradwatch": tracker.state_dict()}, checkpoint
    )
    _train(tracker, model, opt, range(CHECKPOINT, KILLED_AFTER))
    tracker.flush()  # its rows past the checkpoint are in the file...
    os._exit(3)  # ...and it dies like a preempted job: status stays "running", the pid goes away


TABLES = {
    "steps": "step, loss, total_norm, total_norm_after, clipped, coef, threshold, skipped, nonfinite_count",
    "grad_norms": "layer_id, step, norm",
    "grad_stats": "layer_id, step, weight_norm, update_ratio, max_abs",
    "grad_norm_blocks": "size, layer_id, block, norm_min, norm_max, norm_sum, norm_count",
    "clip_events": "step, strategy, threshold, norm_before, norm_after, coef, clipped, n_clipped, n_tensors",
    "metrics": "name, step, value",
}


def _contents(db, run_id):
    con = sqlite3.connect(db)
    try:
        return {
            table: con.execute(
                f"SELECT {cols} FROM {table} WHERE run_id = ? ORDER BY {cols}", (run_id,)
            ).fetchall()
            for table, cols in TABLES.items()
        }
    finally:
        con.close()


@pytest.mark.slow
def test_a_killed_run_resumed_from_its_checkpoint_records_what_an_uninterrupted_run_does(tmp_path):
    # The oracle: END steps without interruption.
    model, opt = _trainee(momentum=0.9)
    with _tracker(model, tmp_path / "straight.db") as tracker:
        _train(tracker, model, opt, range(END))
    expected = _contents(tmp_path / "straight.db", tracker.run_id)
    expected_weights = [p.detach().clone() for p in model.parameters()]

    db, checkpoint = tmp_path / "resumed.db", tmp_path / "ckpt.pt"
    killed = subprocess.run(
        [sys.executable, __file__, str(db), str(checkpoint)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 3, killed.stderr
    with Store.open(db, readonly=True) as store:
        before = store.runs()
    # (its last step's row waits for its update ratio, which came with the next step: it never came)
    assert before["status"].tolist() == ["crashed"] and before["last_step"].tolist() == [KILLED_AFTER - 2]

    state = torch.load(checkpoint)
    assert state["gradwatch"]["step"] == CHECKPOINT
    model, opt = _trainee(momentum=0.9)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    with _tracker(model, db, resume=state["gradwatch"]) as tracker:
        assert tracker.run_id == state["gradwatch"]["run_id"] and tracker.step_count == CHECKPOINT
        _train(tracker, model, opt, range(CHECKPOINT, END))

    got = _contents(db, tracker.run_id)
    for table in TABLES:
        assert len(got[table]) == len(expected[table]), table  # nothing left of steps END..KILLED_AFTER-1
        for g, e in zip(got[table], expected[table], strict=True):
            for a, b in zip(g, e, strict=True):
                assert a == b if isinstance(b, str) or b is None else a == pytest.approx(b, rel=1e-6), (
                    table,
                    g,
                    e,
                )
    assert any(b[0] == 16 for b in got["grad_norm_blocks"])  # block 0 survived; block 1 went with its steps
    assert all(b[2] == 0 for b in got["grad_norm_blocks"])
    for p, q in zip(model.parameters(), expected_weights, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    with Store.open(db, readonly=True) as store:
        run = store.runs().iloc[0]
    assert run["status"] == "finished" and run["resumed_from_step"] == CHECKPOINT
    assert run["pid"] == os.getpid() and run["resumed_at"] >= run["created_at"]


def _finished_run(db):
    model, opt = _trainee()
    with _tracker(model, db) as tracker:
        _train(tracker, model, opt, range(5))
    return tracker.state_dict(), _contents(db, tracker.run_id)


def test_state_dict_holds_the_run_the_next_step_and_the_clip_state(db_path):
    model, opt = _trainee()
    with _tracker(model, db_path) as tracker:
        _train(tracker, model, opt, range(3))
        state = tracker.state_dict()
        # Everything recorded before the checkpoint is already in the file.
        assert len(_contents(db_path, tracker.run_id)["steps"]) == 3
    assert state["run_id"] == tracker.run_id and state["step"] == 3 and state["clip"] == tracker.clip.spec
    assert state["clip_state"]["count"] == 3
    assert GradTracker(model, enabled=False).state_dict() == {}


def test_a_finished_run_can_be_continued(db_path):
    state, before = _finished_run(db_path)
    model, opt = _trainee()
    with _tracker(model, db_path, resume=state) as tracker:
        _train(tracker, model, opt, range(5, 7))
    after = _contents(db_path, tracker.run_id)
    assert [r[0] for r in after["steps"]] == list(range(7))
    assert after["steps"][:5] == before["steps"]  # rows before the checkpoint are kept as they were


def test_the_continuing_process_config_replaces_the_recorded_one_and_the_trackers_notes_stay(db_path):
    # A restart that trains longer records its own settings: a relaunch replays what the run last ran
    # with. A process that passes no config leaves the recorded one alone.
    from sqlite_rows import rows

    def config():
        return json.loads(rows(db_path, "SELECT config FROM runs")[0][0])

    model, opt = _trainee()
    with _tracker(model, db_path, config={"epochs": 1, "lr": 0.1}) as tracker:
        _train(tracker, model, opt, range(2))
    noted = {"epochs": 1, "lr": 0.1, "_gradwatch": {"origin": "kept"}}
    with sqlite3.connect(db_path) as conn:  # a note of the tracker's, as a fork records its origin
        conn.execute("UPDATE runs SET config = ?", (json.dumps(noted),))
    state = tracker.state_dict()
    model, opt = _trainee()
    with _tracker(model, db_path, resume=state, config={"epochs": 3, "lr": 0.1}) as tracker:
        _train(tracker, model, opt, range(2, 3))
    assert config() == {"epochs": 3, "lr": 0.1, "_gradwatch": {"origin": "kept"}}
    with _tracker(model, db_path, resume=tracker.state_dict()) as tracker:
        pass
    assert config() == {"epochs": 3, "lr": 0.1, "_gradwatch": {"origin": "kept"}}


def test_a_resume_records_the_continuing_process_settings_and_trainable_layers(db_path):
    # The run's columns describe what it runs with now: a restart with another every= or nonfinite=, and a
    # model whose first layer the restart froze (layers.trainable is the current model's).
    from sqlite_rows import rows

    model, opt = _trainee()
    with _tracker(model, db_path) as tracker:
        _train(tracker, model, opt, range(2))
    state = tracker.state_dict()
    model, opt = _trainee()
    model[0].requires_grad_(False)
    with _tracker(model, db_path, resume=state, every=2, nonfinite="skip") as tracker:
        _train(tracker, model, opt, range(2, 4))
    assert rows(db_path, "SELECT every, nonfinite FROM runs") == [(2, "skip")]
    trainable = [t for (t,) in rows(db_path, "SELECT trainable FROM layers ORDER BY id")]
    assert trainable == [0, 0] + [1] * (len(trainable) - 2)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(clip="norm:1.0"), ValueError, "recorded with clip="),
        (dict(model="wider"), CannotResume, "another model"),
        (dict(state=lambda s: {**s, "run_id": 99}), RunNotFound, "run 99 is not in"),
        (dict(state=lambda s: {**s, "run_id": None}), ValueError, "no run id"),
        (dict(state=lambda s: {**s, "step": -1}), ValueError, "step -1"),
        (dict(state=lambda s: {"step": 3}), ValueError, "state_dict"),
        (dict(state=lambda s: {}), ValueError, "state_dict"),
        (dict(state=lambda s: {**s, "clip_state": {}}), ValueError, "clip_state does not fit"),  # (KeyError)
        (dict(state=lambda s: {**s, "clip_state": None}), ValueError, "clip_state does not fit"),
    ],
)
def test_a_run_that_cannot_be_resumed_is_refused_and_left_as_it_was(db_path, change, error, match):
    state, before = _finished_run(db_path)
    state = change.get("state", lambda s: s)(state)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3)) if "model" in change else _model()
    kw = dict(
        db=db_path, run="resumable", clip=change.get("clip", CLIP), extra_stats=True, handle_sigterm=False
    )
    with pytest.raises(error, match=match):
        GradTracker(model, resume=state, **kw)
    assert _contents(db_path, 1) == before
    with Store.open(db_path, readonly=True) as store:
        assert store.runs()["status"].tolist() == ["finished"]


def test_a_run_whose_process_is_alive_is_not_resumed(db_path):
    model, opt = _trainee()
    with _tracker(model, db_path) as live:
        _train(live, model, opt, range(3))
        state = live.state_dict()
    # Resumed since by a program that is no tracker of this process (a Store writer, as another process's
    # would be): alive, so refused.
    with Store.open(db_path) as store:
        store.resume_run(live.run_id, from_step=3, layers=store.layer_rows(live.run_id))
        with pytest.raises(CannotResume, match=f"still running \\(pid {os.getpid()}"):
            _tracker(_model(), db_path, resume=state)
    assert len(_contents(db_path, live.run_id)["steps"]) == 3


def test_resuming_a_run_this_process_still_records_closes_its_tracker_first(db_path):
    # A notebook cell `tracker = GradTracker(new_model, resume=ckpt)` run again: the cell's previous tracker
    # still records the run (its name is rebound only after the constructor returns). It used to be refused
    # as "still running" with this very process's pid.
    model, opt = _trainee()
    first = _tracker(model, db_path)
    _train(first, model, opt, range(3))
    state = first.state_dict()
    model2 = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"run #1 records the run this one continues .* closed now"):
        again = _tracker(model2, db_path, resume=state)
    assert first._finished and again.run_id == first.run_id == 1
    _train(again, model2, torch.optim.SGD(model2.parameters(), lr=0.1), range(3, 5))
    again.finish()
    got = _contents(db_path, 1)
    assert [row[0] for row in got["steps"]] == [0, 1, 2, 3, 4]
    with Store.open(db_path, readonly=True) as store:
        assert store.runs()["status"].tolist() == ["finished"]


def test_resuming_needs_the_database_that_recorded_the_run(tmp_path):
    state, _ = _finished_run(tmp_path / "a.db")
    with pytest.raises(DatabaseNotFound):
        _tracker(_model(), tmp_path / "b.db", resume=state)
    assert not (tmp_path / "b.db").exists()


def test_a_reader_opened_before_the_resume_counts_the_resumed_run_afresh(db_path):
    state, _ = _finished_run(db_path)
    with Store.open(db_path, readonly=True) as reader:  # a dashboard, open all along
        assert reader.runs()["n_steps"].tolist() == [5]
        envelope = reader.grad_norm_envelope(1, max_points=10)
        state = {**state, "step": 2}  # a checkpoint from before step 2
        model, opt = _trainee()
        with _tracker(model, db_path, resume=state) as tracker:
            _train(tracker, model, opt, range(2, 3))
        runs = reader.runs()
        assert runs["n_steps"].tolist() == [3] and runs["last_step"].tolist() == [2]
        again = reader.grad_norm_envelope(1, max_points=10)
        assert len(again) < len(envelope) and again["step"].max() == 2


if __name__ == "__main__":
    _killed_attempt(sys.argv[1], sys.argv[2])


def test_a_run_last_seen_on_another_host_is_waited_for_until_its_heartbeat_is_stale(db_path):
    # A job restarted on a new node right after the old node died: the old heartbeat is still fresh.
    state, before = _finished_run(db_path)
    con = sqlite3.connect(db_path)
    con.execute(  # as the dead process left it: running, 28 s after its last heartbeat (stale after 30 s)
        "UPDATE runs SET status = 'running', host = 'node-7', pid = 4242, heartbeat_at = ?, "
        "finished_at = NULL",
        (time.time() - 28.0,),
    )
    con.commit()
    con.close()
    t0 = time.monotonic()
    with _tracker(_model(), db_path, resume={**state, "step": 3}) as tracker:
        waited = time.monotonic() - t0
    assert 1.0 < waited < 15.0  # waited for the heartbeat to go stale, not for the full 30 s
    assert tracker.run_id == 1
    assert [r[0] for r in _contents(db_path, 1)["steps"]] == [0, 1, 2]


def _runs(db):
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT id, name, clip, parent_id, status, config FROM runs ORDER BY id"
        ).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    "env",
    [
        {"GRADWATCH_CLIP": "norm:0.5"},  # another strategy from outside: a new run from the checkpoint
        {"GRADWATCH_PARENT_RUN": "1", "GRADWATCH_RUN": "relaunched"},  # the dashboard's relaunch, same clip
    ],
)
def test_a_relaunch_of_a_program_that_resumes_starts_a_new_run_from_the_checkpoint(db_path, monkeypatch, env):
    state, before = _finished_run(db_path)
    state = {**state, "step": 3}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model, opt = _trainee()
    with _tracker(model, db_path, resume=state) as tracker:
        _train(tracker, model, opt, range(3, 6))
    assert _contents(db_path, 1) == before  # the original run is left as it was
    ((_, name, clip, parent, status, config),) = _runs(db_path)[1:]
    assert (
        parent == 1
        and status == "finished"
        and json.loads(config)["_gradwatch"]["resumed_from"]
        == {
            "run_id": 1,
            "step": 3,
        }
    )
    assert clip == parse_clip(env.get("GRADWATCH_CLIP", CLIP)).spec
    assert [r[0] for r in _contents(db_path, tracker.run_id)["steps"]] == [3, 4, 5]  # numbered on


def test_the_same_clip_from_the_environment_still_resumes_in_place(db_path, monkeypatch):
    state, _ = _finished_run(db_path)
    monkeypatch.setenv("GRADWATCH_CLIP", CLIP)  # e.g. set in every job script
    model, opt = _trainee()
    with _tracker(model, db_path, resume={**state, "step": 3}) as tracker:
        _train(tracker, model, opt, range(3, 4))
    assert tracker.run_id == 1 and len(_runs(db_path)) == 1
    assert [r[0] for r in _contents(db_path, 1)["steps"]] == [0, 1, 2, 3]


class _LoRA(nn.Module):
    """A low-rank adapter around a Linear, as fine-tuning code injects it: the base gets new names."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, 2, bias=False)
        self.b = nn.Linear(2, base.out_features, bias=False)

    def forward(self, x):
        return self.base(x) + self.b(self.a(x))


# (checkpoint at, the attempt dies after): checkpoints after both changes; right after each change, the
# attempt dying before the step that would have recorded it (None: state_dict() records it); and before
# both, by an attempt that went on past them (the layers it added later are not required of the model).
@pytest.mark.parametrize("save_at, die_after", [(4, 4), (2, 2), (2, None), (3, None), (1, 5)])
def test_a_run_whose_model_changed_mid_run_resumes_with_the_model_of_its_checkpoint(
    tmp_path, save_at, die_after
):
    # A head appended at step 2 and an adapter injected at step 3: the run numbers its layers in the order
    # they came, not as the changed model's named_parameters() would. Resuming used to be refused as
    # "another model"; it now takes the recorded ids by name and records what an uninterrupted run does.
    def change(model, step):
        torch.manual_seed(100 + step)
        if step == 2:
            model.append(nn.Linear(3, 3))
        if step == 3:
            model[0] = _LoRA(model[0])

    def _in(p, opt):
        return any(p is q for g in opt.param_groups for q in g["params"])

    def run(db, save_at=None, die_after=None):
        model, opt = _trainee()
        tracker = _tracker(model, db)
        step, changed_upto = 0, -1
        while step < 6:
            if step > changed_upto:  # (a model restored from the checkpoint has its changes up to there)
                change(model, step)
                changed_upto = step
                if step in (2, 3):
                    opt.add_param_group({"params": [p for p in model.parameters() if not _in(p, opt)]})
            if step == save_at:
                state, snapshot = tracker.state_dict(), copy.deepcopy((model, opt))
            if not (step == save_at and die_after is None):  # (None: preempted right after saving)
                _train(tracker, model, opt, [step])
            if save_at is not None and step == (save_at if die_after is None else die_after):  # preempted
                tracker.finish("failed")
                model, opt = snapshot  # back to the checkpoint
                tracker = _tracker(model, db, resume=state)
                step = changed_upto = save_at
                save_at = None
                continue
            step += 1
        tracker.finish()

    uninterrupted, resumed = tmp_path / "a.db", tmp_path / "b.db"
    run(uninterrupted)
    run(resumed, save_at, die_after)
    layers = "SELECT id, name, shape, trainable FROM layers ORDER BY id"
    with sqlite3.connect(uninterrupted) as a, sqlite3.connect(resumed) as b:
        assert b.execute(layers).fetchall() == a.execute(layers).fetchall()
        names = [n for (n,) in a.execute("SELECT name FROM layers ORDER BY id")]
    assert names[:2] == ["0.weight", "0.bias"] and names[4:] == [
        "3.weight", "3.bias", "0.base.weight", "0.base.bias", "0.a.weight", "0.b.weight"
    ]  # fmt: skip
    assert _contents(resumed, 1) == _contents(uninterrupted, 1)


@pytest.mark.parametrize("saved_layers", [True, False])  # False: a state saved before it named them
def test_a_resume_whose_model_lacks_a_measured_layer_is_refused(db_path, saved_layers):
    state, before = _finished_run(db_path)
    if not saved_layers:
        state = {k: v for k, v in state.items() if k != "layers"}  # checked against the recorded norms
    model = _model()[:2]  # 2.weight and 2.bias, measured until the checkpoint, are gone
    with pytest.raises(CannotResume, match=r"it measured 2\.weight, 2\.bias until the checkpoint, and this"):
        _tracker(model, db_path, resume=state)
    assert _contents(db_path, 1) == before


@pytest.mark.parametrize(
    "before, after, resumed_has, accepted",
    [
        # tied before the checkpoint, untied after: the checkpoint's (tied) model resumes
        ("tie", "untie", "tie", True),
        # deleted before the checkpoint, added back after: the checkpoint's model (without it) resumes
        ("delete", "add", "delete", True),
        # appended at a step that was not logged (every=3), before the checkpoint: required all the same
        ("append", None, None, False),
        # in the model at the checkpoint, deleted after: required all the same
        (None, "delete", "delete", False),
    ],
)
def test_what_a_resumed_model_must_have_is_what_the_checkpoints_model_had(
    db_path, before, after, resumed_has, accepted
):
    def build():
        torch.manual_seed(0)
        return nn.ModuleDict(dict(a=nn.Linear(4, 4), b=nn.Linear(4, 4), aux=nn.Linear(4, 4)))

    def apply(model, what):
        if what == "tie":
            model["b"].weight = model["aux"].weight
        elif what == "untie":
            model["b"].weight = nn.Parameter(model["b"].weight.detach().clone())
        elif what == "delete":
            del model["aux"]
        elif what == "add":
            model["aux"] = nn.Linear(4, 4)
        elif what == "append":
            model["head"] = nn.Linear(4, 4)

    def step(tracker, model):
        model.zero_grad(set_to_none=True)
        x = torch.ones(2, 4)
        for name in ("a", "b", "aux", "head"):
            if name in model:
                x = torch.tanh(model[name](x))
        x.sum().backward()
        tracker.step()

    model = build()
    tracker = GradTracker(model, db=db_path, run="r", every=3, handle_sigterm=False)
    for i in range(5):
        if i == 4:  # a step every=3 does not log
            apply(model, before)
        step(tracker, model)
    state = tracker.state_dict()  # at step 5
    apply(model, after)
    step(tracker, model)
    tracker.finish("failed")  # the attempt dies after the change

    resumed = build()
    apply(resumed, resumed_has)
    kw = dict(db=db_path, run="r", every=3, resume=state, handle_sigterm=False)
    if accepted:
        with GradTracker(resumed, **kw) as t:
            step(t, resumed)
        assert t.run_id == state["run_id"]
    else:
        with pytest.raises(CannotResume, match="until the checkpoint, and this model does not have"):
            GradTracker(resumed, **kw)
