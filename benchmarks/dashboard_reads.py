"""The data behind the dashboard's Run page, on a 100k-step × 100-layer run (10M grad_norms rows).

Builds the run through the real BackgroundWriter (cached under /tmp for reruns), then times, with the
read-only Store the dashboard uses:
  * first render: runs(), layers(), steps() (global norm, all rows), grad_norm_envelope() for 8 layers at
    <= 2000 points, heatmap() <= 200 columns, clip_events(), metrics();
  * incremental refresh after 10 new steps: the same calls, the row-wise ones with after_step;
  * latency from writer.add_step() to the step being visible to a reader polling steps(after_step).
Each figure is the median of --repeats runs, the queries interleaved (A B C ... A B C ...).

    .venv/bin/python benchmarks/dashboard_reads.py [--steps 100000] [--layers 100] [--db PATH] [--rebuild]
"""

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

from tracker.store import Store

ENVELOPE_LAYERS = 8


def build(path: Path, steps: int, layers: int) -> float:
    """Write the run through the real writer; returns the seconds it took (enqueue to committed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    rng = random.Random(0)
    store = Store.open(path)
    run_id = store.create_run(name="bench-100k", clip="norm:1.0", config={"steps": steps, "layers": layers})
    store.add_layers(
        run_id, [dict(id=i, name=f"blocks.{i // 4}.w{i % 4}", shape=[256, 256]) for i in range(layers)]
    )
    pool = [[rng.lognormvariate(0, 1) for _ in range(layers)] for _ in range(97)]
    writer = store.writer(run_id)
    t0 = time.perf_counter()
    for step in range(steps):
        norms = pool[step % 97]
        total = 5.0 + (step % 13)
        clipped = total > 1.0
        writer.add_step(step=step, norms=norms, total_norm=total, total_norm_after=1.0, loss=1 / (1 + step),
                        clipped=clipped, coef=min(1.0, 1.0 / total), threshold=1.0)  # fmt: skip
        writer.add_clip_events([dict(step=step, strategy="norm", threshold=1.0, norm_before=total,
                                     norm_after=1.0, coef=1.0 / total, clipped=clipped)])  # fmt: skip
        if step % 100 == 99:
            writer.add_metrics(step, {"train_loss": 1 / (1 + step), "lr": 1e-3})
        if step % 1000 == 999:
            writer.add_metrics(step, {"val_loss": 2 / (1 + step), "val_acc": step / steps})
        if step % 20_000 == 19_999:
            print(f"  enqueued {step + 1:,} steps, {writer.pending:,} items waiting", flush=True)
    writer.flush()
    seconds = time.perf_counter() - t0
    writer.close("finished")
    store.close()
    return seconds


def first_render(store: Store, run_id: int, layer_ids: list[int]) -> dict:
    return {
        "runs()": lambda: store.runs(),
        "layers()": lambda: store.layers(run_id),
        "steps() all rows": lambda: store.steps(run_id),
        f"grad_norm_envelope({ENVELOPE_LAYERS} layers, 2000 pts)": lambda: store.grad_norm_envelope(
            run_id, layer_ids, None, None, 2000
        ),
        "heatmap(200 columns)": lambda: store.heatmap(run_id, None, None, 200),
        "clip_events() all rows": lambda: store.clip_events(run_id),
        "metrics()": lambda: store.metrics([run_id]),
    }


def incremental(store: Store, run_id: int, layer_ids: list[int], after: int) -> dict:
    return {
        "runs()": lambda: store.runs(),
        "steps(after_step)": lambda: store.steps(run_id, after_step=after),
        f"grad_norm_envelope({ENVELOPE_LAYERS} layers, 2000 pts)": lambda: store.grad_norm_envelope(
            run_id, layer_ids, None, None, 2000
        ),
        "heatmap(200 columns)": lambda: store.heatmap(run_id, None, None, 200),
        "clip_events(after_step)": lambda: store.clip_events(run_id, after_step=after),
        "metrics(after_step)": lambda: store.metrics([run_id], after_step=after),
    }


def timed(calls: dict, repeats: int) -> dict:
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():  # interleaved: A B C ... A B C ...
            t = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in samples.items()}


def visibility_latency(path: Path, run_id: int, start_step: int, trials: int) -> list[float]:
    """Seconds from add_step() on a writer to the row being returned by a polling reader."""
    writer_store = Store.open(path)
    writer = writer_store.writer(run_id)
    reader = Store.open(path, readonly=True)
    out = []
    for i in range(trials):
        step = start_step + i
        t0 = time.perf_counter()
        writer.add_step(step=step, norms=[1.0] * 100, total_norm=1.0)
        while reader.steps(run_id, after_step=step - 1).empty:
            time.sleep(0.001)
        out.append(time.perf_counter() - t0)
        time.sleep(0.05)
    writer.close("finished")
    writer_store.close()
    reader.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100_000, help="logged steps of the run")
    p.add_argument("--layers", type=int, default=100, help="parameter tensors (grad_norms rows per step)")
    p.add_argument("--db", type=Path, default=None, help="database to build or reuse (default under /tmp)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached database")
    p.add_argument("--repeats", type=int, default=7, help="repeats per figure (medians reported)")
    args = p.parse_args(argv)
    path = args.db or Path(f"/tmp/gradwatch-bench-{args.steps}x{args.layers}.db")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}")  # fmt: skip
    if args.rebuild or not path.exists():
        print(f"building {args.steps:,} steps x {args.layers} layers into {path} ...", flush=True)
        seconds = build(path, args.steps, args.layers)
        rows = args.steps * args.layers
        print(
            f"built {rows:,} grad_norms rows in {seconds:.1f} s through the writer "
            f"= {rows / seconds:,.0f} rows/s"
        )
    print(f"database: {path} ({path.stat().st_size / 2**20:,.0f} MiB)")

    store = Store.open(path, readonly=True)
    run_id = int(store.runs()["id"].iloc[0])
    layer_ids = list(range(0, args.layers, max(1, args.layers // ENVELOPE_LAYERS)))[:ENVELOPE_LAYERS]
    first = timed(first_render(store, run_id, layer_ids), args.repeats)

    # 10 new steps (about a second of training) arrive; the page asks for what is new.
    last = int(store.steps(run_id, after_step=args.steps - 2)["step"].max())
    latency = visibility_latency(path, run_id, last + 1, trials=20)
    inc = timed(incremental(store, run_id, layer_ids, after=last + 10), args.repeats)
    store.close()

    print("\n| first render of the Run page | median ms |\n|---|---|")
    for name, s in first.items():
        print(f"| {name} | {s * 1e3:.1f} |")
    print(f"| **total** (target <= 1000) | **{sum(first.values()) * 1e3:.0f}** |")
    print("\n| incremental refresh | median ms |\n|---|---|")
    for name, s in inc.items():
        print(f"| {name} | {s * 1e3:.1f} |")
    print(f"| **total** (target <= 50) | **{sum(inc.values()) * 1e3:.1f}** |")
    print(
        f"\nadd_step -> visible to a polling reader: median {statistics.median(latency) * 1e3:.1f} ms, "
        f"max {max(latency) * 1e3:.1f} ms over {len(latency)} steps (target <= 2000 ms)"
    )


if __name__ == "__main__":
    main()
