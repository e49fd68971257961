"""The trainer's figures: time to accuracy (first run included) and what the tracker costs inside it.

    python benchmarks/trainer_speed.py                    # everything, prints a Markdown section
    python benchmarks/trainer_speed.py --only overhead    # one part: keywords | digits | overhead
    python benchmarks/trainer_speed.py --write-docs       # also rewrite docs/benchmarks.md's trainer section
    python benchmarks/trainer_speed.py --quick            # a smoke run on tiny corpora (figures meaningless)

Every figure comes from real `python -m trainer` processes, as a user runs them:
* keywords: `--preset keywords` with a fresh, empty corpus cache: wall time from process start to exit
  (corpus generation, training, evaluation), and the test accuracy on held-out voices from the database.
  Target (issue 3): ≥ 95% in ≤ 90 s on 2 CPU cores.
* digits: `--preset digits`, the same, test CER. Target: ≤ 10% in ≤ 5 min.
* overhead: the mean time per training step (evaluation excluded, as the trainer reports it) of
  (A) `--clip none --no-track`, (B) tracker on with `--clip none`, (C) tracker on with `--clip norm:1.0`,
  interleaved A B C A B C … on a warm cache; medians over rounds, ratios B/A and C/A.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import replace_section  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_trainer(args: list[str], threads: int) -> tuple[float, str, str, float]:
    """Run the trainer; returns (wall seconds, stdout, stderr, CPU seconds of the process, all threads).

    CPU time counts what the process computed, not the time it waited for a core: on a shared machine
    it is the steadier measure of what the tracker adds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("GRADWATCH_CLIP", None)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wall, proc.stdout, proc.stderr, cpu


def final_metrics(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name, value FROM metrics WHERE run_id = (SELECT MAX(id) FROM runs) ORDER BY step"
        ).fetchall()
    return dict(rows)  # later steps overwrite earlier ones: the last value of every metric


def time_to_accuracy(preset: str, threads: int, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args = ["--preset", preset, "--cache-dir", str(tmp / "corpora"), "--db", str(tmp / "g.db")]
        if quick:
            args += ["--corpus-size", "tiny", "--max-steps", "5"]
        wall, _, err, _ = run_trainer(args, threads)
        m = final_metrics(tmp / "g.db")
    gen = re.search(r"data ready in ([0-9.]+) s", err)
    return {"wall": wall, "generation": float(gen.group(1)) if gen else None, **m}


VARIANTS = {
    "A: --clip none --no-track": ["--clip", "none", "--no-track"],
    "B: tracker, --clip none": ["--clip", "none"],
    "C: tracker, --clip norm:1.0": ["--clip", "norm:1.0"],
}


def overhead(
    threads: int, rounds: int, steps: int, quick: bool
) -> dict[tuple[str, int], dict[str, list[float]]]:
    """Per (variant, steps): wall ms per training step and CPU seconds of the whole run, one per round.

    Each variant runs with N and 2N steps: the CPU difference is the cost of N training steps alone,
    without process start, imports, corpus loading, evaluation or the tracker's one-off set-up."""
    runs = [(name, n, extra) for name, extra in VARIANTS.items() for n in (steps, 2 * steps)]
    res = {(name, n): {"ms": [], "cpu": []} for name, n, _ in runs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Both step counts stay within the first epoch (53 batches of the small corpus), so every run
        # evaluates once, at its end.
        base = ["--task", "keywords", "--model", "seed-cnn", "--cache-dir", str(tmp / "corpora"), "--quiet",
                "--epochs", "1", "--db", str(tmp / "g.db")]  # fmt: skip
        if quick:
            base += ["--corpus-size", "tiny", "--batch-size", "8"]
        run_trainer([*base, "--no-track", "--max-steps", "1"], threads)  # generate the corpus once
        for r in range(rounds):
            order = runs if r % 2 == 0 else runs[::-1]  # alternate, so no run always follows the same one
            for name, n, extra in order:
                _, out, _, cpu = run_trainer([*base, *extra, "--max-steps", str(n)], threads)
                res[name, n]["ms"].append(float(re.search(r"([0-9.]+) ms/step", out).group(1)))
                res[name, n]["cpu"].append(cpu)
    return res


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def markdown(results: dict, args) -> str:
    import torch

    load = f"; load average at start {args.load:.1f}" if args.load is not None else ""
    lines = [
        "## Trainer: time to accuracy, tracker cost inside the trainer",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by "
        f"`python benchmarks/trainer_speed.py` on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {args.threads} torch thread(s) per process{load}. "
        "Wall times on a shared machine include time spent waiting for a core: re-run on a quiet one.",
        "",
    ]
    if "keywords" in results:
        k = results["keywords"]
        acc = k.get("test_acc")
        met = "met" if acc is not None and acc >= 0.95 and k["wall"] <= 90 else "not met"
        lines += [
            "### Keywords + seed-cnn (`--preset keywords`), first run: fresh corpus cache",
            "",
            "| wall: generation + training + evaluation | data ready (generation + features) | test accuracy "
            "| ≥ 95% in ≤ 90 s |",
            "|---|---|---|---|",
            f"| {_secs(k['wall'])} | {_secs(k['generation'])} | {_pct(acc)} | {met} |",
            "",
        ]
    if "digits" in results:
        d = results["digits"]
        cer = d.get("test_cer")
        met = cer is not None and cer <= 0.10 and d["wall"] <= 300
        lines += [
            "### Digits + crnn-ctc (`--preset digits`), first run: fresh corpus cache",
            "",
            "| wall | data ready (generation + features) | test CER | test WER | ≤ 10% CER in ≤ 300 s |",
            "|---|---|---|---|---|",
            f"| {_secs(d['wall'])} | {_secs(d['generation'])} | {_pct(cer)} | {_pct(d.get('test_wer'))} "
            f"| {'met' if met else 'not met'} |",
            "",
        ]
    if "overhead" in results:
        o, n = results["overhead"], args.steps
        names = list(VARIANTS)

        def step_cpu(name):  # CPU seconds of one training step, per round: (2N run - N run) / N
            return [(x - y) / n for x, y in zip(o[name, 2 * n]["cpu"], o[name, n]["cpu"], strict=True)]

        def fixed_cpu(name):  # what the variant costs once per run beyond A, steps excluded
            return [
                (x - y) - n * (sx - sy)
                for x, y, sx, sy in zip(o[name, n]["cpu"], o[names[0], n]["cpu"], step_cpu(name),
                                        step_cpu(names[0]), strict=True)
            ]  # fmt: skip

        bare = statistics.median(step_cpu(names[0]))
        a_ms = statistics.median(o[names[0], 2 * n]["ms"])
        lines += [
            "### Tracker cost inside the trainer",
            "",
            f"keywords + seed-cnn, batch 64; every variant runs {n} and {2 * n} training steps, "
            f"{args.rounds} interleaved rounds, medians. Wall: time per training step as the trainer reports "
            f"it ({2 * n}-step runs, evaluation excluded). CPU per step: (CPU of the {2 * n}-step run "
            f"− CPU of the {n}-step run) / {n}, CPU of the whole process with all its threads "
            "(the tracker's writer included): steadier than wall time on a shared machine. "
            "One-off: the rest of the CPU difference to A (importing the tracker, creating the database, "
            "the writer thread).",
            "",
            "| variant | wall ms / step: median (min–max) | wall vs A | CPU ms / step | vs A | one-off CPU |",
            "|---|---|---|---|---|---|",
        ]
        for name in names:
            ms = o[name, 2 * n]["ms"]
            cpu = statistics.median(step_cpu(name))
            lines.append(
                f"| {name} | {statistics.median(ms):.1f} ({min(ms):.1f}–{max(ms):.1f}) "
                f"| {100 * (statistics.median(ms) / a_ms - 1):+.1f}% | {1000 * cpu:.1f} "
                f"| {100 * (cpu / bare - 1):+.1f}% | {statistics.median(fixed_cpu(name)):+.2f} s |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("keywords", "digits", "overhead"), action="append", help="parts to run")
    p.add_argument("--threads", type=int, default=2, help="torch threads per trainer process")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds for the overhead part")
    p.add_argument(
        "--steps", type=int, default=24, help="training steps per overhead run (2x must fit an epoch)"
    )
    p.add_argument("--quick", action="store_true", help="tiny corpora: checks the script, not the figures")
    p.add_argument(
        "--write-docs", action="store_true", help="replace the trainer section of docs/benchmarks.md"
    )
    args = p.parse_args()
    args.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    parts = args.only or ["keywords", "digits", "overhead"]
    results = {}
    for part in parts:
        print(f"running {part} ...", file=sys.stderr, flush=True)
        if part == "overhead":
            results[part] = overhead(args.threads, args.rounds, args.steps, args.quick)
        else:
            results[part] = time_to_accuracy(part, args.threads, args.quick)
    section = markdown(results, args)
    print(section)
    if args.write_docs:
        replace_section(DOCS, "trainer", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
