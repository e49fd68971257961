"""A long run name becomes part of file names (the job's log, a trainer relaunch's replayed config), which
file systems limit to 255 bytes, not characters: 80 Chinese characters are 240 bytes. Such a relaunch
starts, and two long names that begin alike still get two files."""

import dataclasses
import functools
import json
import sys

from polling import wait_for

from dashboard.jobs import Launcher, log_tail
from dashboard.launch import relaunch_spec
from dashboard.text import safe_file_name
from tracker.store import Store

_wait = functools.partial(wait_for, timeout=60.0, interval=0.02)

NAME_MAX = 255  # bytes of one file name (Linux, macOS)
LONG = "梯度裁剪实验" * 14  # 84 characters, 252 bytes in UTF-8


def test_a_long_chinese_name_launches_and_its_files_fit(tmp_path):
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:  # a trainer run, as `python -m trainer` records one
        run_id = store.create_run(name=LONG, argv=["-m", "trainer"], cwd=str(tmp_path), config={"lr": 0.1})
        store.writer(run_id).close(status="finished")
        run = store.run(run_id)
    logs = tmp_path / "gradwatch-logs"
    spec = relaunch_spec(run, name=f"{LONG} · norm:0.5", db=db, clip="norm:0.5", config_dir=logs)
    # What the Launch button does with it (a stand-in for the trainer: the files are the point here).
    stand_in = dataclasses.replace(spec, argv=(sys.executable, "-c", "print('started')"))
    [job] = Launcher(logs).submit([stand_in])  # was "OSError: [Errno 36] File name too long"
    assert job.error is None, job.error
    assert _wait(lambda: job.state != "running") and "started" in log_tail(job.log_path)
    assert len(job.log_path.name.encode()) <= NAME_MAX
    assert len(spec.config_file.rsplit("/", 1)[1].encode()) <= NAME_MAX
    assert json.loads(open(spec.config_file).read()) == {"lr": 0.1}


def test_long_names_that_begin_alike_get_their_own_file_names():
    first, second = LONG + "甲", LONG + "乙"
    assert safe_file_name(first) != safe_file_name(second)
    assert all(len(safe_file_name(n).encode()) <= 200 for n in (first, second))
    assert safe_file_name(first).startswith("梯度裁剪实验")  # still readable
    assert safe_file_name("kws b/c") == "kws_b_c"  # short names as before
