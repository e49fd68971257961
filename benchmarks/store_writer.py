"""Background writer throughput and the cost of enqueueing on the caller (training) thread.

Writes N steps × L layers of grad norms through the real BackgroundWriter into a fresh file and prints
rows/s (first enqueue to flush() returning, i.e. committed in the file) and the time of one add_step on
the caller thread. Repeats interleaved with a raw executemany baseline (no blocks, no thread) so the
ratio is meaningful on a noisy machine; medians over the repeats.

Then the usual case on a live run, small transactions (the tracker hands rows over about once a second):
process CPU per step committed in transactions of 1, 10 and 100 steps, next to a bare executemany of the
same steps and grad_norms rows in transactions of the same size.

    .venv/bin/python benchmarks/store_writer.py [--steps 20000] [--layers 100] [--repeats 3] [--txn-steps 640]
"""

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from tracker.store import Store

WRITER_KEYS = ("w", "w_cpu", "p50", "p99", "max")


def writer_run(path: Path, steps: int, layers: int, rows_per_step: list[list[float]]):
    store = Store.open(path)
    run_id = store.create_run(name="bench")
    store.add_layers(run_id, [dict(id=i, name=f"layer{i}.weight", shape=[8]) for i in range(layers)])
    writer = store.writer(run_id)
    enqueue = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        norms = rows_per_step[step % len(rows_per_step)]
        a = time.perf_counter()
        writer.add_step(
            step=step, norms=norms, total_norm=1.0, loss=0.5, clipped=False, coef=1.0, threshold=1.0
        )
        enqueue.append(time.perf_counter() - a)
    writer.flush()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    writer.close()
    store.close()
    enqueue.sort()
    return (
        steps * layers / total,
        steps * layers / cpu,
        enqueue[len(enqueue) // 2],
        enqueue[int(len(enqueue) * 0.99)],
        max(enqueue),
    )


def raw_run(path: Path, steps: int, layers: int, rows_per_step: list[list[float]]):
    """Baseline: plain executemany of the grad_norms rows in 200k-row transactions, same schema."""
    store = Store.open(path)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    t0, c0 = time.perf_counter(), time.process_time()
    batch = []
    for step in range(steps):
        norms = rows_per_step[step % len(rows_per_step)]
        batch.extend((1, i, step, v) for i, v in enumerate(norms))
        if len(batch) >= 200_000 or step == steps - 1:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO grad_norms VALUES (?, ?, ?, ?)", batch)
            conn.execute("COMMIT")
            batch = []
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return steps * layers / total, steps * layers / cpu


def txn_run(path: Path, layers: int, per_txn: int, steps: int, rows_per_step, writer: bool) -> float:
    """Process CPU (µs) per step committed in transactions of ``per_txn`` steps: the BackgroundWriter
    (enqueue outside the timing, then flush(): the thread's transaction) or a bare executemany."""
    store = Store.open(path)
    run_id = store.create_run(name="txn")
    cpu = 0.0
    if writer:
        w = store.writer(run_id)
        for start in range(0, steps, per_txn):
            for step in range(start, start + per_txn):
                w.add_step(
                    step=step, norms=rows_per_step[step % len(rows_per_step)], total_norm=1.0, loss=0.5
                )
            c0 = time.process_time()
            w.flush()
            cpu += time.process_time() - c0
        w.close()
        store.close()
        return cpu / steps * 1e6
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    for start in range(0, steps, per_txn):
        span = range(start, start + per_txn)
        c0 = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO steps (run_id, step, loss, total_norm) VALUES (?, ?, 0.5, 1.0)",
            [(run_id, s) for s in span],
        )
        conn.executemany(
            "INSERT INTO grad_norms VALUES (?, ?, ?, ?)",
            [(run_id, i, s, v) for s in span for i, v in enumerate(rows_per_step[s % len(rows_per_step)])],
        )
        conn.execute("COMMIT")
        cpu += time.process_time() - c0
    conn.close()
    return cpu / steps * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000, help="logged steps per repeat")
    p.add_argument("--layers", type=int, default=100, help="parameter tensors (norm rows per step)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    p.add_argument(
        "--txn-steps",
        type=int,
        default=640,
        help="steps per repeat in the small-transaction table (0: skip it)",
    )
    args = p.parse_args(argv)
    rng = random.Random(0)
    rows_per_step = [[rng.lognormvariate(0, 1) for _ in range(args.layers)] for _ in range(64)]
    shape = (args.steps, args.layers, rows_per_step)
    res = {k: [] for k in ("w", "w_cpu", "p50", "p99", "max", "raw", "raw_cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: writer, raw, writer, raw, ...
            for k, v in zip(WRITER_KEYS, writer_run(Path(tmp) / f"w{r}.db", *shape), strict=True):
                res[k].append(v)
            for k, v in zip(("raw", "raw_cpu"), raw_run(Path(tmp) / f"r{r}.db", *shape), strict=True):
                res[k].append(v)
    m = {k: statistics.median(v) for k, v in res.items()}
    load = os.getloadavg()[0]
    print(f"{args.steps} steps x {args.layers} layers = {args.steps * args.layers:,} rows per repeat, "
          f"{args.repeats} repeats; {os.cpu_count()} CPUs, load average {load:.1f}")  # fmt: skip
    print("| measure | median |")
    print("|---|---|")
    print(
        "| BackgroundWriter: grad_norms rows/s committed (wall; + steps rows and 4 block levels) | "
        f"{m['w']:,.0f} |"
    )
    print(f"| BackgroundWriter: rows per process-CPU-second | {m['w_cpu']:,.0f} |")
    print(f"| baseline, bare executemany of the same rows: rows/s (wall) | {m['raw']:,.0f} |")
    print(f"| baseline: rows per process-CPU-second | {m['raw_cpu']:,.0f} |")
    print(f"| writer / baseline (CPU) | {m['w_cpu'] / m['raw_cpu']:.2f} |")
    print(f"| add_step() on the caller thread ({args.layers} norms): median | {m['p50'] * 1e6:.1f} µs |")
    print(f"| add_step(): 99th percentile | {m['p99'] * 1e6:.1f} µs |")
    print(
        f"| add_step(): worst (GIL hand-off / GC pauses while the thread works) | {m['max'] * 1e3:.2f} ms |"
    )
    print(
        "queue: unbounded SimpleQueue (put never blocks, nothing dropped); max_queue=N opts into drop+count"
    )
    if args.txn_steps:
        print(f"\nsmall transactions, {args.layers} layers, {args.txn_steps} steps per repeat")
        print("| steps per transaction | writer CPU µs/step | bare executemany CPU µs/step | writer / bare |")
        print("|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for per_txn in (1, 10, 100):
                got = {True: [], False: []}
                for r in range(args.repeats):  # interleaved: writer, bare, writer, bare, ...
                    for writer in (True, False):
                        db = Path(tmp) / f"t{per_txn}-{r}-{writer}.db"
                        got[writer].append(
                            txn_run(db, args.layers, per_txn, args.txn_steps, rows_per_step, writer)
                        )
                w, b = statistics.median(got[True]), statistics.median(got[False])
                print(f"| {per_txn} | {w:.0f} | {b:.0f} | {w / b:.2f} |")


if __name__ == "__main__":
    main()
