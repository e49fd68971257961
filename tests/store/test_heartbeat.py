"""A run whose process died is reported as crashed: by its pid at once, by a stale heartbeat otherwise."""

import os
import sqlite3
import subprocess
import sys
import time

import pytest
from polling import wait_for

from tests.store.helpers import REPO, raw_sql
from tracker.store import Store

TRAINER = """
import sys, time
from tracker.store import Store
store = Store.open(sys.argv[1])
run_id = store.create_run(name="victim")
w = store.writer(run_id, heartbeat_every=0.2)
print(run_id, flush=True)
step = 0
while True:
    w.add_step(step=step, norms=[1.0, 2.0]); step += 1
    time.sleep(0.01)
"""


def test_killed_process_is_crashed_and_heartbeat_advances(db_path):
    Store.open(db_path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(db_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = int(proc.stdout.readline())
        first = raw_sql(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))[0][0]
        with Store.open(db_path, readonly=True) as reader:
            assert reader.run(run_id)["status"] == "running"
            assert wait_for(
                lambda: (
                    raw_sql(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))[0][0] > first
                ),
                timeout=20,
            )
            proc.kill()
            proc.wait()
            run = reader.run(run_id)
            assert run["status"] == "crashed"  # the pid is gone: no need to wait for the heartbeat to age
            assert run["recorded_status"] == "running"
            assert run["n_steps"] > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stale_heartbeat_on_another_host(db_path):
    with Store.open(db_path) as s:
        run_id = s.create_run(name="remote", host="some-other-machine", pid=1)
    with Store.open(db_path, readonly=True, stale_after=0.5) as reader:
        assert reader.run(run_id)["status"] == "running"  # pid not checked: not this machine
        assert wait_for(lambda: reader.run(run_id)["status"] == "crashed", timeout=10)


def test_closed_run_keeps_its_status(db_path):
    with Store.open(db_path, stale_after=0.1) as s:
        run_id = s.create_run(name="done")
        s.writer(run_id).close("stopped")
        time.sleep(0.2)
        assert s.run(run_id)["status"] == "stopped"


def test_idle_writer_still_beats(db_path):
    # A run that logs rarely (every=1000, a long evaluation) must not look dead: the thread stamps
    # heartbeat_at on its own every heartbeat_every seconds.
    with Store.open(db_path) as s:
        run_id = s.create_run(name="idle")
        w = s.writer(run_id, heartbeat_every=0.2)
        w.flush()
        first = raw_sql(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))[0][0]
        assert wait_for(
            lambda: raw_sql(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))[0][0] > first,
            timeout=20,
        )
        w.close()


def _age_heartbeat(db_path, run_id):
    with sqlite3.connect(db_path) as con:  # as a writer held up by another process's lock leaves it
        con.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 3600 WHERE id = ?", (run_id,))


def test_a_stale_heartbeat_of_a_process_alive_here_is_still_running(db_path):
    # A writer held up for minutes by another process's write lock (a sqlite3 shell) beats no more, but the
    # run still trains and writes everything once the lock goes: its live process says so, not "crashed".
    with Store.open(db_path) as s:
        run_id = s.create_run(name="held up", pid=os.getpid())
    _age_heartbeat(db_path, run_id)
    with Store.open(db_path, readonly=True, stale_after=60) as reader:
        assert reader.run(run_id)["status"] == "running"


@pytest.mark.parametrize("who", ["a newer process", "pid 1 of this machine"])
def test_a_stale_heartbeat_whose_pid_names_another_process_is_crashed(db_path, who):
    # The pid was reused by a newer process, or the run's process lived in another pid namespace (a
    # container sharing the host's name: its pid 1 is not this machine's init, which started long before).
    with Store.open(db_path) as s:
        run_id = s.create_run(name="elsewhere")  # this process, its start time recorded
    other = (
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        if who != "pid 1 of this machine"
        else None
    )
    try:
        with sqlite3.connect(db_path) as con:
            con.execute("UPDATE runs SET pid = ? WHERE id = ?", (other.pid if other else 1, run_id))
        _age_heartbeat(db_path, run_id)
        with Store.open(db_path, readonly=True, stale_after=60) as reader:
            assert reader.run(run_id)["status"] == "crashed"
    finally:
        if other is not None:
            other.kill()
            other.wait()


def test_a_stale_heartbeat_without_a_recorded_start_time_is_crashed(db_path):
    # A run recorded before pid_started_at existed: its pid alone cannot tell that process from another.
    with Store.open(db_path) as s:
        run_id = s.create_run(name="old")
    with sqlite3.connect(db_path) as con:
        con.execute("UPDATE runs SET pid_started_at = NULL WHERE id = ?", (run_id,))
    _age_heartbeat(db_path, run_id)
    with Store.open(db_path, readonly=True, stale_after=60) as reader:
        assert reader.run(run_id)["status"] == "crashed"


def test_a_file_from_before_pid_started_at_is_read_and_gets_it_when_a_run_is_added(db_path):
    with Store.open(db_path) as s:
        first = s.create_run(name="before")
    with sqlite3.connect(db_path) as con:
        con.execute("ALTER TABLE runs DROP COLUMN pid_started_at")  # as files written before it are
        con.execute("ALTER TABLE runs DROP COLUMN env")
    with Store.open(db_path, readonly=True) as reader:
        assert reader.run(first)["pid_started_at"] is None and reader.run(first)["status"] == "running"
        assert reader.run(first)["env"] is None
    with Store.open(db_path) as s:
        second = s.create_run(name="after", env={"LR": "0.5"})
        assert s.run(second)["env"] == {"LR": "0.5"}
    recorded = raw_sql(db_path, "SELECT id, pid_started_at FROM runs ORDER BY id")
    assert recorded[0] == (first, None) and recorded[1][0] == second
    if os.path.exists("/proc/uptime"):  # this process started after the machine did, and before now
        with open("/proc/uptime") as f:
            booted = time.time() - float(f.read().split()[0])
        assert booted - 2 <= recorded[1][1] <= time.time()
