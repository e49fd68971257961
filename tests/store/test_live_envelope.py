"""A reader polling grad_norm_envelope while a writer thread commits: every answer is exact.

The oracle holds whatever the timing: the writer appends steps in order and never rewrites one, so when
a read's range ends at step hi (the last step it saw), every step <= hi is in the file with its final
values. Each answer must then tile [0, hi] and equal numpy over the generated norms of those steps, even
when the writer committed between the reader's queries (the blocks it reads are complete, hence present).
"""

import random
import threading

import numpy as np

from tests.store.helpers import make_norms
from tracker.store import Store

LAYERS = [0, 3]


def assert_exact(df, arr):
    """df: an envelope answer for LAYERS; arr: (steps, layers) norms with NaN."""
    for lid in LAYERS:
        part = df[df["layer_id"] == lid]
        starts, ends = part["step"].to_numpy(), part["step_end"].to_numpy()
        assert starts[0] == 0 and (starts[1:] == ends[:-1] + 1).all()  # tiles [0, hi], no gap
        vals = arr[: ends[-1] + 1, lid]
        np.testing.assert_array_equal(part["norm_min"].to_numpy(), np.fmin.reduceat(vals, starts))
        np.testing.assert_array_equal(part["norm_max"].to_numpy(), np.fmax.reduceat(vals, starts))
        np.testing.assert_array_equal(part["count"].to_numpy(), np.add.reduceat(~np.isnan(vals), starts))


def test_envelope_read_while_the_writer_commits_is_always_exact(db_path):
    n_steps = 3000
    norms = make_norms(n_steps, 4, seed=13, nonfinite_every=59)
    arr = np.array([norms[s] for s in range(n_steps)], dtype=float)
    answers, errors = [], []
    stop = threading.Event()
    with Store.open(db_path) as s:
        run_id = s.create_run(name="live")
        s.add_layers(run_id, [dict(id=i, name=f"l{i}", shape=[3]) for i in range(4)])
        reader = Store.open(db_path, readonly=True)  # its own connection and envelope cache

        def poll():
            try:
                while not stop.is_set():
                    for max_points in (13, 64, 2000):
                        df = reader.grad_norm_envelope(run_id, LAYERS, max_points=max_points)
                        if not df.empty:
                            answers.append(df)
            except Exception as exc:  # re-raised on the test thread
                errors.append(exc)

        thread = threading.Thread(target=poll)
        thread.start()
        try:
            w = s.writer(run_id)
            rng = random.Random(1)
            step = 0
            while step < n_steps:  # batches that end anywhere inside a block, and some that jump many
                n = rng.choice([1, 3, 7, 16, 41, 130])
                for st in range(step, min(step + n, n_steps)):
                    w.add_step(step=st, norms=norms[st])
                step += n
                w.flush()
            w.close()
        finally:
            stop.set()
            thread.join()
        answers.append(reader.grad_norm_envelope(run_id, LAYERS, max_points=64))
        reader.close()
    assert errors == []
    assert len({int(df["step_end"].max()) for df in answers}) >= 5  # the reads really saw the run grow
    for df in answers:
        assert_exact(df, arr)
    assert answers[-1]["step_end"].max() == n_steps - 1
