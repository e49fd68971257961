"""Smoke tests of the store benchmarks: real subprocesses on tiny runs, with this tree's store.

No timing is asserted (tiny runs measure nothing). What is checked: each script runs end to end and
prints every row of its tables with a number in it, so the figures in docs/benchmarks.md can be re-made.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args, cwd) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def table_rows(stdout: str) -> dict:
    return {line.split("|")[1].strip(): line for line in stdout.splitlines() if line.startswith("| ")}


def test_store_writer_prints_throughput_and_small_transactions(tmp_path):
    out = run(
        "store_writer.py", "--steps", 300, "--layers", 5, "--repeats", 1, "--txn-steps", 20, cwd=tmp_path
    )
    rows = table_rows(out)
    assert re.search(r"\| [\d,]+ \|$", rows["BackgroundWriter: rows per process-CPU-second"])
    assert re.search(r"\| \d+\.\d\d \|$", rows["writer / baseline (CPU)"])
    for per_txn in ("1", "10", "100"):
        assert re.fullmatch(r"\| \d+ \| \d+ \| \d+ \| \d+\.\d\d \|", rows[per_txn]), rows[per_txn]


def test_dashboard_reads_builds_a_run_and_times_every_read(tmp_path):
    db = tmp_path / "bench.db"
    out = run(
        "dashboard_reads.py",
        "--steps",
        300,
        "--layers",
        4,
        "--db",
        db,
        "--rebuild",
        "--repeats",
        1,
        cwd=tmp_path,
    )
    assert "built 1,200 grad_norms rows" in out
    rows = table_rows(out)
    for name in ("grad_norm_envelope(8 layers, 2000 pts)", "heatmap(200 columns, 100 layers)", "runs()"):
        assert re.search(r"\| \d+\.\d \| \d+\.\d \|$", rows[name]), name
    assert re.search(r"add_step -> visible to a polling reader: median \d+\.\d ms", out)
