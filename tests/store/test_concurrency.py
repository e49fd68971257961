"""Several processes write runs into one file at once while a reader reads it: nothing lost, no errors."""

import sqlite3
import subprocess
import sys
from contextlib import closing

import pandas as pd

from tests.store.helpers import REPO, raw_sql
from tracker.store import Store

WRITER = """
import random, sys, time
from tracker.store import Store
path, name, steps, layers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(name)
store = Store.open(path, busy_timeout=30)
run_id = store.create_run(name=name)
store.add_layers(run_id, [dict(id=i, name=f"l{i}", shape=[4]) for i in range(layers)])
w = store.writer(run_id)
for step in range(steps):
    w.add_step(step=step, norms=[rng.random() for _ in range(layers)], total_norm=1.0)
    w.add_metrics(step, {"train_loss": 1.0 / (step + 1)})
    if step % 25 == 24:
        w.flush()  # many small transactions, interleaved with the other processes'
        time.sleep(0.01)  # and time for the reader to see the run half-written
w.close("finished")
print(run_id)
"""


# One statement, so one snapshot of the file: per run, its steps and the rows that commit with them.
SNAPSHOT = """
SELECT r.id, r.status,
       (SELECT count(*) FROM steps s WHERE s.run_id = r.id),
       (SELECT max(step) FROM steps s WHERE s.run_id = r.id),
       (SELECT count(*) FROM grad_norms g WHERE g.run_id = r.id),
       (SELECT count(*) FROM grad_norm_blocks b WHERE b.run_id = r.id AND b.size = 16)
FROM runs r ORDER BY r.id
"""


def check_snapshot(conn, seen: dict, *, steps: int, layers: int) -> None:
    """What the writer commits together is seen together, and no read goes back in time."""
    for run_id, status, n, last, n_norms, n_blocks in conn.execute(SNAPSHOT).fetchall():
        assert n == (0 if last is None else last + 1), (run_id, n, last)  # steps 0..last, no gap
        assert n_norms == n * layers, (run_id, n, n_norms)  # a step's row and its norms: one transaction
        assert n_blocks == n // 16 * layers, (run_id, n, n_blocks)  # a block with the step completing it
        assert status == "running" or n == steps, (run_id, status, n)  # final status with the last rows
        assert n >= seen.get(run_id, 0), (run_id, n, seen)
        seen[run_id] = n


def check_store_reads(reader, read_up_to: dict, *, layers: int) -> None:
    """The dashboard's incremental reads through the Store: gap-free, and exact while writers commit."""
    runs = reader.runs()
    for run_id, n_steps, last_step in zip(runs["id"], runs["n_steps"], runs["last_step"], strict=True):
        run_id, done = int(run_id), read_up_to.get(int(run_id), -1)
        assert n_steps == (0 if pd.isna(last_step) else last_step + 1)
        assert n_steps >= done + 1
        new = reader.steps(run_id, after_step=done)["step"].tolist()
        assert new == list(range(done + 1, done + 1 + len(new)))
        if new:  # read after the steps rows: each of those steps has all its norms
            norms = reader.grad_norms(run_id, start=new[0], end=new[-1])
            assert len(norms) == len(new) * layers
            read_up_to[run_id] = new[-1]
        env = reader.grad_norm_envelope(run_id, [0, 1], max_points=50)
        if not env.empty:  # exact: each step from 0 to the read's last one counted once (no NaN norms here)
            counts = env.groupby("layer_id")["count"].sum()
            assert counts.tolist() == [env["step_end"].max() + 1] * 2
            assert env["step_end"].max() >= read_up_to.get(run_id, -1)


def test_concurrent_writers_and_a_reader(db_path):
    Store.open(db_path).close()
    steps, layers, n = 410, 20, 3  # 410: the last 16-step block of each run is partial
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_path), f"w{i}", str(steps), str(layers)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    reads_mid_run, seen, read_up_to = 0, {}, {}
    try:
        with (
            Store.open(db_path, readonly=True) as reader,
            closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn,
        ):
            while any(p.poll() is None for p in procs):
                check_snapshot(conn, seen, steps=steps, layers=layers)
                check_store_reads(reader, read_up_to, layers=layers)
                reads_mid_run += any(0 < k < steps for k in seen.values())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert reads_mid_run > 0  # the checks above ran while runs were half-written, not only before or after
    rows = raw_sql(
        db_path,
        "SELECT r.name, r.status, (SELECT count(*) FROM steps s WHERE s.run_id = r.id),"
        " (SELECT count(*) FROM grad_norms g WHERE g.run_id = r.id),"
        " (SELECT count(*) FROM metrics m WHERE m.run_id = r.id) FROM runs r ORDER BY r.name",
    )
    assert rows == [(f"w{i}", "finished", steps, steps * layers, steps) for i in range(n)]
    # The blocks each writer wrote are exactly the complete ones, each an aggregate of the raw rows.
    oracle = raw_sql(
        db_path,
        "SELECT g.run_id, layer_id, step / 16, min(norm), max(norm), count(norm) FROM grad_norms g "
        "GROUP BY g.run_id, layer_id, step / 16 "
        "HAVING (step / 16 + 1) * 16 - 1 <= (SELECT max(step) FROM steps s WHERE s.run_id = g.run_id) "
        "ORDER BY 1, 2, 3",
    )
    stored = raw_sql(
        db_path,
        "SELECT run_id, layer_id, block, norm_min, norm_max, norm_count FROM grad_norm_blocks "
        "WHERE size = 16 ORDER BY 1, 2, 3",
    )
    assert stored == oracle


def test_one_store_shared_by_threads_while_a_run_writes(db_path):
    # Streamlit calls one cached Store from several script threads; a writer appends meanwhile.
    import threading

    from tests.store.helpers import make_norms

    norms = make_norms(800, 4, seed=2)
    with Store.open(db_path) as s:
        run_id = s.create_run(name="shared")
        w = s.writer(run_id)
        reader = Store.open(db_path, readonly=True)
        errors = []

        def poll():
            try:
                for _ in range(30):
                    reader.runs()
                    reader.grad_norm_envelope(run_id, [0, 3], max_points=20)
                    reader.heatmap(run_id, max_columns=10)
                    reader.steps(run_id, after_step=700)
            except Exception as exc:  # collected and re-raised on the test thread
                errors.append(exc)

        threads = [threading.Thread(target=poll) for _ in range(4)]
        for t in threads:
            t.start()
        for step in range(800):
            w.add_step(step=step, norms=norms[step])
            if step % 100 == 99:
                w.flush()
        w.close()
        for t in threads:
            t.join()
        assert errors == []
        df = reader.grad_norm_envelope(run_id, [0, 3], max_points=20)
        for row in df.itertuples():
            vals = [norms[st][row.layer_id] for st in range(row.step, row.step_end + 1)]
            assert (row.norm_min, row.norm_max, row.count) == (min(vals), max(vals), len(vals))
        assert df.groupby("layer_id")["count"].sum().tolist() == [800, 800]
        assert reader.run(run_id)["n_steps"] == 800
        assert len(reader.steps(run_id)) == 800
        reader.close()


HOLDER = """
import sys
from tracker.store import Store
store = Store.open(sys.argv[1])
store.create_run(name=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # until told to go: then the last writer's connection closes as the process exits
"""


def test_a_reader_stays_current_when_its_process_opens_the_file_again_and_the_last_writer_exits(tmp_path):
    # POSIX file locks belong to the process: closing ANY descriptor of the file drops all of them. A reader
    # whose locks were dropped that way looks absent to the last writer, which then deletes the WAL on exit
    # under the reader: every later commit would be invisible to it (a frozen dashboard).
    db = tmp_path / "g.db"
    Store.open(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), "first"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "ready"
    reader = Store.open(db, readonly=True)
    try:
        assert list(reader.runs()["name"]) == ["first"]
        Store.open(db).close()  # e.g. the dashboard's stop request, or a second tracker in this process
        Store.open(db, readonly=True).close()
        holder.communicate("go\n", timeout=60)
        subprocess.run(
            [sys.executable, "-c", "import sys; from tracker.store import Store; "
             "Store.open(sys.argv[1]).create_run(name='second')", str(db)],
            cwd=REPO, check=True, timeout=60,
        )  # fmt: skip
        assert list(reader.runs()["name"]) == ["first", "second"]
    finally:
        reader.close()
