"""Another process holding the write lock longer than the busy timeout (a sqlite3 shell in a transaction, a
backup tool): the writer keeps every row and writes it once the lock goes; only close(timeout=) gives up."""

import sqlite3
import threading
import warnings

import pytest

from tests.store.helpers import raw_sql
from tracker.store import DatabaseLocked, DatabaseLockedWarning


def _hold_lock(db_path) -> sqlite3.Connection:
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def _wait_until_locked(writer) -> None:
    """Until the writer reports the lock (its first attempt outlasted the busy timeout)."""
    for _ in range(1000):
        try:
            writer.flush(timeout=0.05)
        except DatabaseLocked:
            return
        except TimeoutError:
            continue
    raise AssertionError("the writer never reported the lock")


def _writer_past_step_0(store, name: str, busy_timeout: float, width: int = 1):
    """A run whose step 0 is in the file, and its writer: what the lock then holds back is what follows."""
    run_id = store.create_run(name=name)
    w = store.writer(run_id, busy_timeout=busy_timeout)
    w.add_step(step=0, norms=[1.0] * width)
    w.flush()
    return run_id, w


def test_rows_wait_for_a_long_lock_and_are_all_written_with_the_final_status(store, db_path):
    _, w = _writer_past_step_0(store, "locked", 0.05, width=2)  # many busy timeouts pass while it is held
    holder = _hold_lock(db_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w.add_step(step=1, norms=[1.0, 2.0])
        _wait_until_locked(w)  # (flush(timeout) raised DatabaseLocked: the rows stay queued)
        for step in range(2, 40):
            w.add_step(step=step, norms=[1.0, 2.0])
            w.add_metrics(step, {"loss": 1.0 / step})
    locked = [x for x in caught if issubclass(x.category, DatabaseLockedWarning)]
    assert len(locked) == 1  # once per lock, not once per row
    text = str(locked[0].message)
    assert f"{db_path} has been locked by another process" in text and "waiting in memory" in text
    assert "sqlite3 shell" in text and "backup tool" in text
    assert raw_sql(db_path, "SELECT count(*) FROM steps") == [(1,)]  # nothing written meanwhile
    release = threading.Timer(0.2, holder.execute, ("COMMIT",))
    release.start()
    w.close("finished", timeout=120)  # the lock goes before the deadline: everything is written
    release.join()
    holder.close()
    assert raw_sql(db_path, "SELECT count(*), max(step) FROM steps") == [(40, 39)]
    assert raw_sql(db_path, "SELECT count(*) FROM grad_norms") == [(80,)]
    assert raw_sql(db_path, "SELECT count(*) FROM metrics") == [(38,)]
    assert raw_sql(db_path, "SELECT status FROM runs") == [("finished",)]


def test_close_with_a_timeout_gives_up_and_says_what_was_not_written(store, db_path):
    run_id, w = _writer_past_step_0(store, "given up", 0.05)
    holder = _hold_lock(db_path)
    try:
        with pytest.warns(DatabaseLockedWarning):
            for step in range(1, 11):
                w.add_step(step=step, norms=[1.0])
            _wait_until_locked(w)
            w.add_step(step=11, norms=[1.0])
        with pytest.raises(DatabaseLocked) as info:
            w.close("finished", timeout=0.1)
    finally:
        holder.execute("COMMIT")
        holder.close()
    message = str(info.value)
    assert f"Gave up writing run {run_id}" in message and "locked by another process" in message
    assert "11 logged steps" in message and "'finished' could not be written" in message
    assert "its steps up to 0" in message and "sqlite3 shell" in message
    w._thread.join(10)  # the thread stops without writing what close() reported as not written
    assert raw_sql(db_path, "SELECT count(*) FROM steps") == [(1,)]
    assert raw_sql(db_path, "SELECT status FROM runs") == [("running",)]


def test_a_close_timeout_shorter_than_the_busy_timeout_still_gives_up_and_counts_metrics(store, db_path):
    # The lock is not known as one until a whole busy timeout has passed: close(timeout) used to return
    # quietly after 2 x timeout with nothing written (lost when the process then exits), and the count left
    # the metrics out.
    _, w = _writer_past_step_0(store, "short close", 30.0)
    holder = _hold_lock(db_path)
    try:
        for step in range(1, 4):
            w.add_step(step=step, norms=[1.0])
            w.add_metrics(step, {"loss": 0.5, "acc": 0.9})
        with pytest.raises(DatabaseLocked) as info:
            w.close("finished", timeout=0.5)
    finally:
        holder.execute("COMMIT")
        holder.close()
    message = str(info.value)
    assert "could not be written within 0.5 s" in message
    assert "3 logged steps, 6 metric values and the final status 'finished' could not be written" in message
    w._thread.join(40)  # (the lock went: its attempt commits nothing of what close() said was lost)
    assert not w._thread.is_alive()
    assert raw_sql(db_path, "SELECT count(*), (SELECT count(*) FROM metrics) FROM steps") == [(1, 0)]
    assert raw_sql(db_path, "SELECT status FROM runs") == [("running",)]
