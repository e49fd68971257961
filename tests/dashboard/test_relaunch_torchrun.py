"""A run of torchrun (several processes, or one, as the tracker notes in ``config["_gradwatch"]["torchrun"]``)
is not relaunched as one plain ``python script.py``, which stops at once ("environment variable RANK
expected"): it is refused before it starts, with the torchrun command to run by hand."""

import sys

import pytest
from dashboard_helpers import open_page, texts

from dashboard.launch import relaunch_spec
from tracker.store import Store


def _record(tmp_path, *, world_size: int, typed: list[str], notes: dict | None = None) -> tuple:
    """A run as the tracker records one of torchrun's processes: ``sys.argv``, and the command as typed
    (torchrun starts ``python -u script.py ...``)."""
    (tmp_path / "ddp.py").write_text("pass\n")
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(
            name="ddp", argv=["ddp.py", "--epochs", "1"], cwd=str(tmp_path), python=sys.executable,
            world_size=world_size, config={"_gradwatch": {"orig_argv": typed, **(notes or {})}},
        )  # fmt: skip
        store.writer(run).close(status="finished")
        return db, store.run(run)


def _refusal(tmp_path, db, run) -> str:
    with pytest.raises(ValueError) as refused:
        relaunch_spec(run, name="ddp b", db=db, clip="norm:0.5", config_dir=tmp_path)
    return str(refused.value)


def test_a_run_of_two_processes_is_refused_with_the_torchrun_command(tmp_path):
    db, run = _record(tmp_path, world_size=2, typed=["-u", "ddp.py", "--epochs", "1"])
    message = _refusal(tmp_path, db, run)
    assert f"Run #{run['id']} ran as 2 processes" in message and "RANK" in message
    assert (
        f"`cd {tmp_path} && GRADWATCH_CLIP=norm:0.5 GRADWATCH_DB={db} GRADWATCH_PARENT_RUN={run['id']} "
        # (its run recorded no environment: nor will its relaunch, GRADWATCH_RECORD_ENV=0)
        "GRADWATCH_RUN='ddp b' GRADWATCH_RECORD_ENV=0 torchrun --nproc-per-node=2 ddp.py --epochs 1`"
    ) in message


def test_a_torchrun_run_of_one_process_is_refused_too(tmp_path):
    # World size 1 (--nproc-per-node 1): only the tracker's note tells that torchrun started it.
    typed = ["-u", "-m", "pkg.train", "--x"]
    db, run = _record(tmp_path, world_size=1, typed=typed, notes={"torchrun": True})
    message = _refusal(tmp_path, db, run)
    assert f"Run #{run['id']} was started by torchrun" in message
    assert "torchrun --nproc-per-node=1 -m pkg.train --x`" in message
    # Without the note, one process is a plain run: relaunched as recorded.
    plain = {**run, "config": {"_gradwatch": {"orig_argv": ["-u", "ddp.py"]}}}
    spec = relaunch_spec(plain, name="x", db=db, clip="none", config_dir=tmp_path)
    assert spec.argv[1:] == ("-u", "ddp.py")


def test_the_launch_page_refuses_it_and_offers_no_launch(tmp_path, app):
    db, run = _record(tmp_path, world_size=4, typed=["-u", "ddp.py", "--epochs", "1"])
    at = open_page(app(db), "views/launch.py", launch_from=int(run["id"]))
    at.radio(key="clip_mode").set_value("Raw spec").run()
    at.text_input(key="clip_raw").input("norm:0.5").run()
    assert not at.exception
    assert "torchrun --nproc-per-node=4 ddp.py --epochs 1" in texts(at)
    assert not [b for b in at.button if b.key == "launch_go"]
