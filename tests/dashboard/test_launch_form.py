"""The Launch form: the exact command is shown before launching; bad values give an inline error and start
nothing (checked on disk: no log file, no replayed config)."""

import json
import shlex
import time
from pathlib import Path

import pytest
from dashboard_helpers import open_page, texts

from tracker.store import Store


@pytest.fixture
def launch(recorded, app):
    return open_page(app(recorded.path), "views/launch.py", launch_from=recorded.ids["child"])


def _nothing_launched(recorded):
    logs = recorded.path.parent / "gradwatch-logs"
    return not logs.exists() or not any(logs.iterdir())


def _command(at) -> str:
    return "\n".join(c.value for c in at.code)


def test_shows_the_exact_command_for_a_trainer_run(launch, recorded):
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input("norm:0.25").run()
    launch.number_input(key="opt_lr").set_value(0.01).run()
    command = _command(launch)
    assert "-m trainer --config" in command
    assert "--lr 0.01" in command and "--clip norm:0.25" in command
    assert f"--db {recorded.path}" in command and f"--parent-run {recorded.ids['child']}" in command
    assert "--epochs" not in command  # unchanged options are replayed from the config, not repeated
    assert not launch.button(key="launch_go").disabled
    assert _nothing_launched(recorded)


def test_strategy_form_builds_a_canonical_spec(launch):
    launch.selectbox(key="clip_strategy").set_value("zclip").run()
    launch.text_input(key="clip_zclip_z").input("3").run()
    assert any("Valid: `zclip:3" in c.value for c in launch.caption)
    assert "--clip zclip:3" in _command(launch)


@pytest.mark.parametrize(
    "spec, message",
    [("norm:-1", "norm:-1"), ("bogus:1", "unknown strategy 'bogus'"), ("norm:", "needs a threshold")],
)
def test_bad_raw_spec_is_an_inline_error_and_launches_nothing(launch, recorded, spec, message):
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input(spec).run()
    assert message in texts(launch, "error")
    assert launch.button(key="launch_go").disabled  # AppTest, like a browser, cannot click it
    assert not launch.exception and _nothing_launched(recorded)
    assert not any("-m trainer" in c.value for c in launch.code)


def test_negative_threshold_in_the_strategy_form(launch, recorded):
    launch.selectbox(key="clip_strategy").set_value("norm").run()
    launch.text_input(key="clip_norm_c").input("-1").run()
    assert "-1" in texts(launch, "error")
    assert launch.button(key="launch_go").disabled and _nothing_launched(recorded)


@pytest.mark.parametrize(
    "widget, value, message",
    [
        ("opt_lr", -0.1, "Learning rate (--lr) must be > 0, got -0.1"),
        ("opt_lr", 0.0, "Learning rate (--lr) must be > 0, got 0.0"),  # the trainer refuses lr 0
        ("opt_seed", -1, "Seed (--seed) must be ≥ 0, got -1"),
        ("opt_model", "crnn-ctc", "Model 'crnn-ctc' cannot learn task 'keywords'"),
    ],
)
def test_bad_trainer_option(launch, recorded, widget, value, message):
    kind = launch.selectbox if widget == "opt_model" else launch.number_input
    kind(key=widget).set_value(value).run()
    assert message in texts(launch, "error")
    assert launch.button(key="launch_go").disabled and _nothing_launched(recorded)


def test_malformed_sweep_names_the_bad_line_and_launches_nothing(launch, recorded):
    launch.text_area(key="sweep_text").input("none\nnorm:1.0\nnorm:abc\nzclip:-2").run()
    message = texts(launch, "error")
    assert "line 3 ('norm:abc')" in message and "line 4 ('zclip:-2')" in message
    assert not [b for b in launch.button if b.key == "sweep_go"]
    assert _nothing_launched(recorded)


def test_duplicate_sweep_entries_are_refused(launch, recorded):
    launch.text_area(key="sweep_text").input("norm:1.0\nnorm:1").run()
    assert "more than once" in texts(launch, "error")
    assert _nothing_launched(recorded)


def test_valid_sweep_previews_one_command_per_spec(launch, recorded):
    launch.text_area(key="sweep_text").input("none\nnorm:1.0  # the usual\n\nautoclip:10").run()
    command = max((c.value for c in launch.code), key=lambda text: text.count("-m trainer"))
    assert command.count("-m trainer") == 3
    for spec in ("--clip none", "--clip norm:1.0", "--clip autoclip:10"):
        assert spec in command
    assert launch.button(key="sweep_go").label == "Launch sweep of 3"
    assert _nothing_launched(recorded)


def test_form_starts_from_the_recorded_clipping(launch, recorded):
    # The child run was recorded with norm:0.5: the form opens on that strategy and threshold.
    assert launch.radio(key="clip_mode").value == "Strategy"
    assert launch.selectbox(key="clip_strategy").value == "norm"
    assert launch.text_input(key="clip_norm_c").value == "0.5"
    launch.selectbox(key="launch_source").set_value(recorded.ids["base"]).run()
    assert launch.selectbox(key="clip_strategy").value == "none"


def test_sweep_respects_the_limit_and_jobs_can_be_stopped_and_cancelled(launch, recorded):
    launch.text_area(key="sweep_text").input("norm:1.0\nnorm:2.0").run()
    launch.number_input(key="sweep_limit").set_value(1).run()
    launch.button(key="sweep_go").click().run()
    assert any("Queued 2 runs; 1 started." in s.value for s in launch.success)
    states = [m.value for m in launch.markdown if m.value.startswith("**child · norm\\:")]
    assert sorted(s.split(" — ")[1].split(" ·")[0] for s in states) == ["queued", "running"]
    # Cancel the queued one (job 1), then stop the running one (job 0, SIGTERM): nothing is left to start.
    assert launch.button(key="stop_job_1").label == "Cancel"
    launch.button(key="stop_job_1").click().run()
    assert launch.button(key="stop_job_0").label == "Stop (SIGTERM)"
    launch.button(key="stop_job_0").click().run()
    logs = sorted((recorded.path.parent / "gradwatch-logs").glob("*.log"))
    assert len(logs) == 1 and "--clip norm:1.0" in logs[0].read_text().splitlines()[0]  # job 1 never ran
    for _ in range(200):
        launch.run()
        states = [m.value for m in launch.markdown if m.value.startswith("**child · norm\\:")]
        if not any("running" in s or "queued" in s for s in states):
            break
    # The job this dashboard sent SIGTERM reads as stopped, not as exited with an error code.
    assert any("cancelled" in s for s in states) and any("— stopped" in s for s in states), states


def test_the_command_shown_is_the_one_launched_and_max_steps_0_lifts_the_limit(tmp_path, app):
    db = tmp_path / "gradwatch.db"
    config = {"task": "keywords", "model": "seed-cnn", "lr": 0.001, "epochs": 1, "batch_size": 8,
              "max_steps": 30, "optimizer": "adam", "weight_decay": 0.0, "seed": 0}  # fmt: skip
    with Store.open(db, create=True) as store:
        run = store.create_run(name="capped", config=config, argv=["-m", "trainer"], cwd=str(tmp_path))
        store.writer(run).close()
    at = open_page(app(db), "views/launch.py", launch_from=run)
    at.number_input(key="opt_max_steps").set_value(0).run()
    [shown] = [c.value for c in at.code if "-m trainer" in c.value]
    assert "--max-steps" not in shown
    assert any("`max_steps`" in c.value and "no step limit" in c.value for c in at.caption)
    time.sleep(1.1)  # the user reads the command, then clicks
    at.button(key="launch_go").click().run()
    try:
        [log] = (tmp_path / "gradwatch-logs").glob("*.log")
        assert log.read_text().splitlines()[0] == f"$ {shown}"
        argv = shlex.split(shown)
        replayed = json.loads(Path(argv[argv.index("--config") + 1]).read_text())
        assert replayed["max_steps"] is None and replayed["lr"] == 0.001  # no limit; the rest as recorded
    finally:
        at.button(key="stop_job_0").click().run()  # SIGTERM: nothing is left running
        for _ in range(200):
            if not any(" — running" in m.value for m in at.markdown):
                break
            time.sleep(0.1)
            at.run()


def _tracker_refuses(spec: str, names: list[str]) -> bool:
    """The oracle: does the tracker itself refuse ``spec`` for a model with these parameter names?"""
    import torch

    from tracker import GradTracker

    model = torch.nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        owner = model
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(torch.zeros(2)))
    try:
        GradTracker(model, clip=spec, enabled=False)  # a disabled tracker checks its arguments all the same
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("exclude", ["head", "conv1", "conv1.bias", "fc", "conv"])
def test_an_agc_exclude_is_checked_against_the_runs_layers_as_the_tracker_does(launch, recorded, exclude):
    from dashboard_helpers import LAYERS

    spec = f"agc:0.01,exclude={exclude}"
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input(spec).run()
    refused = _tracker_refuses(spec, LAYERS)
    assert refused == (exclude in ("head", "conv"))  # a prefix is a module name, not a string prefix
    if refused:
        assert f"agc exclude={exclude} matches no parameter" in texts(launch, "error")
        assert launch.button(key="launch_go").disabled and _nothing_launched(recorded)
    else:
        assert not texts(launch, "error") and not launch.button(key="launch_go").disabled


def test_an_agc_exclude_in_the_strategy_form_and_the_sweep(launch, recorded):
    launch.selectbox(key="clip_strategy").set_value("agc").run()
    launch.text_input(key="clip_agc_exclude").input("head").run()
    assert "agc exclude=head matches no parameter" in texts(launch, "error")
    assert launch.button(key="launch_go").disabled
    launch.text_area(key="sweep_text").input("agc:0.01,exclude=fc\nagc:0.01,exclude=head").run()
    message = texts(launch, "error")
    assert "line 2 ('agc:0.01,exclude=head')" in message and "line 1" not in message
    assert not [b for b in launch.button if b.key == "sweep_go"] and _nothing_launched(recorded)


def test_an_agc_exclude_naming_a_tied_alias_is_accepted(tmp_path, app):
    # head.weight is tied to embed.weight: recorded as embed.weight, with the alias in the tracker's note.
    db = tmp_path / "gradwatch.db"
    (tmp_path / "train.py").write_text("pass\n")
    config = {"_gradwatch": {"tied": {"head.weight": "embed.weight"}}}
    with Store.open(db, create=True) as store:
        run = store.create_run(name="tied", config=config, argv=["train.py"], cwd=str(tmp_path))
        layers = [dict(id=0, name="embed.weight", shape=[4, 2]), dict(id=1, name="body.weight", shape=[2, 2])]
        store.add_layers(run, layers)
        store.writer(run).close()
    at = open_page(app(db), "views/launch.py", launch_from=run)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("agc:0.01,exclude=head").run()
    assert not texts(at, "error") and not at.button(key="launch_go").disabled
    at.text_input(key="clip_raw").input("agc:0.01,exclude=tail").run()
    assert "agc exclude=tail matches no parameter" in texts(at, "error")


def test_value_clipping_of_a_run_with_complex_parameters_is_refused_as_the_tracker_refuses_it(tmp_path, app):
    import torch

    from tracker import GradTracker

    db = tmp_path / "gradwatch.db"
    (tmp_path / "train.py").write_text("pass\n")
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    model.frozen = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64), requires_grad=False)
    model.b = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="complex parameters") as oracle:  # the tracker, on that model
        GradTracker(model, clip="value:0.5", enabled=False)
    with Store.open(db, create=True) as store:
        run = store.create_run(name="complex", argv=["train.py"], cwd=str(tmp_path))
        store.add_layers(
            run,
            [
                dict(id=0, name="w", shape=[3], dtype="complex64"),
                dict(id=1, name="frozen", shape=[2], dtype="complex64", trainable=False),
                dict(id=2, name="b", shape=[2], dtype="float32"),
            ],
        )
        store.writer(run).close()
    at = open_page(app(db), "views/launch.py", launch_from=run)
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("value:0.5").run()
    assert str(oracle.value).split(": ", 1)[1] in texts(at, "error")  # the same sentence, naming w alone
    assert at.button(key="launch_go").disabled
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not texts(at, "error") and not at.button(key="launch_go").disabled
