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


def build(path: Path, steps: int, layers: int) -> tuple[float, float]:
    """Write the run through the real writer; returns (wall, process CPU) seconds, enqueue to committed."""
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
    t0, c0 = time.perf_counter(), time.process_time()
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
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    writer.close("finished")
    store.close()
    return seconds, cpu


def first_render(store: Store, run_id: int, layer_ids: list[int]) -> dict:
    """What the Run page needs to draw a 100k-step run: every series downsampled to <= 2000 points."""
    return {
        "runs()": lambda: store.runs(),
        "layers()": lambda: store.layers(run_id),
        "step_envelope(2000 pts): global norm, threshold, clip counts": lambda: store.step_envelope(
            run_id, None, None, 2000
        ),
        f"grad_norm_envelope({ENVELOPE_LAYERS} layers, 2000 pts)": lambda: store.grad_norm_envelope(
            run_id, layer_ids, None, None, 2000
        ),
        "heatmap(200 columns, 100 layers)": lambda: store.heatmap(run_id, None, None, 200),
        "metrics()": lambda: store.metrics([run_id]),
        "step_norms(last step): gradient flow": lambda: store.step_norms(run_id),
    }


def full_rows(store: Store, run_id: int) -> dict:
    """Reading every row instead (100k steps, 100k clip events): for comparison."""
    return {
        "steps() all 100k rows": lambda: store.steps(run_id),
        "clip_events() all 100k rows": lambda: store.clip_events(run_id),
    }


def incremental(store: Store, run_id: int, layer_ids: list[int], after: int) -> dict:
    return {
        "runs()": lambda: store.runs(),
        "steps(after_step)": lambda: store.steps(run_id, after_step=after),
        "step_envelope(2000 pts)": lambda: store.step_envelope(run_id, None, None, 2000),
        f"grad_norm_envelope({ENVELOPE_LAYERS} layers, 2000 pts)": lambda: store.grad_norm_envelope(
            run_id, layer_ids, None, None, 2000
        ),
        "heatmap(200 columns, 100 layers)": lambda: store.heatmap(run_id, None, None, 200),
        "clip_events(after_step)": lambda: store.clip_events(run_id, after_step=after),
        "metrics(after_step)": lambda: store.metrics([run_id], after_step=after),
    }


def timed_once(calls: dict, samples: dict) -> None:
    for name, call in calls.items():  # interleaved: A B C ... A B C ...
        w, c = time.perf_counter(), time.process_time()
        call()
        samples.setdefault(name, []).append((time.perf_counter() - w, time.process_time() - c))


def table(title: str, samples: dict, target_ms: float | None) -> None:
    print(f"\n| {title} | median wall ms | median CPU ms |\n|---|---|---|")
    wall = cpu = 0.0
    for name, v in samples.items():
        w, c = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
        wall, cpu = wall + w, cpu + c
        print(f"| {name} | {w * 1e3:.1f} | {c * 1e3:.1f} |")
    target = "" if target_ms is None else f" (target <= {target_ms:g} ms)"
    print(f"| **total**{target} | **{wall * 1e3:.1f}** | **{cpu * 1e3:.1f}** |")


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

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}")  # fmt: skip
    if args.rebuild or not path.exists():
        print(f"building {args.steps:,} steps x {args.layers} layers into {path} ...", flush=True)
        seconds, cpu = build(path, args.steps, args.layers)
        rows = args.steps * args.layers
        print(
            f"built {rows:,} grad_norms rows (+ steps, clip events, blocks) through the writer: "
            f"{seconds:.1f} s wall = {rows / seconds:,.0f} rows/s; "
            f"process CPU {cpu:.1f} s = {rows / cpu:,.0f} rows per CPU-second"
        )
    print(f"database: {path} ({path.stat().st_size / 2**20:,.0f} MiB)")

    probe = Store.open(path, readonly=True)
    run_id = int(probe.runs()["id"].iloc[0])
    last = int(probe.steps(run_id, after_step=args.steps - 2)["step"].max())
    probe.close()
    layer_ids = list(range(0, args.layers, max(1, args.layers // ENVELOPE_LAYERS)))[:ENVELOPE_LAYERS]

    # First render: a fresh Store each time (cold caches), as when the page is first opened.
    first, full = {}, {}
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        store = Store.open(path, readonly=True)
        first.setdefault("Store.open(readonly=True)", []).append(
            (time.perf_counter() - w, time.process_time() - c)
        )
        timed_once(first_render(store, run_id, layer_ids), first)
        timed_once(full_rows(store, run_id), full)
        store.close()

    # Live: a writer appends 10 steps (about a second of training) before each refresh of an open page.
    latency = visibility_latency(path, run_id, last + 1, trials=20)
    last += 20
    writer_store = Store.open(path)
    writer = writer_store.writer(run_id)
    store = Store.open(path, readonly=True)
    timed_once(first_render(store, run_id, layer_ids), {})  # the page's first render, then refreshes
    inc = {}
    for _ in range(args.repeats):
        for step in range(last + 1, last + 11):
            writer.add_step(step=step, norms=[1.0] * args.layers, total_norm=1.0, clipped=False)
            writer.add_clip_events([dict(step=step, strategy="norm", threshold=1.0, clipped=False)])
        writer.flush()
        timed_once(incremental(store, run_id, layer_ids, after=last), inc)
        last += 10
    writer.close("finished")
    writer_store.close()
    store.close()

    table("first render of the Run page (downsampled series)", first, 1000)
    table("instead: every row of steps and clip_events", full, None)
    table("incremental refresh after 10 new steps", inc, 50)
    print(
        f"\nadd_step -> visible to a polling reader: median {statistics.median(latency) * 1e3:.1f} ms, "
        f"max {max(latency) * 1e3:.1f} ms over {len(latency)} steps (target <= 2000 ms)"
    )


if __name__ == "__main__":
    main()
