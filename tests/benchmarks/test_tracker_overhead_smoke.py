"""Smoke test of benchmarks/tracker_overhead.py: a real subprocess on M1 with one tiny round.

No timing is asserted (one round means nothing). What is checked: the script runs end to end with this
tree's tracker, every variant gets a row with numbers, the host-side table has its model rows, and each
target gets a verdict line.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tracker_overhead.py"
VARIANTS = [
    "bare step",
    "+ torch's norm read (_foreach_norm)",
    "+ gradwatch's norm read (NormPlan)",
    "+ clip_grad_norm_(1.0)",
    "tracker clip=none every=1",
    "tracker clip=norm:1.0",
    "tracker clip=none every=10",
    "tracker extra_stats=True",
]


def _run(cwd, *more):
    args = ["--models", "M1", "--rounds", "2", "--per-round", "1", "--warmup", "0", "--host-reps", "3"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *more], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    return out, rows


def test_tracker_overhead_runs_and_prints_every_variant(tmp_path):
    out, rows = _run(tmp_path)
    for name in VARIANTS:
        assert name in rows, f"no row for {name!r} in:\n{out.stdout}"
        assert re.search(r"\| \d+\.\d \|", rows[name]), rows[name]  # ms/step is a number
    assert re.search(r"^\| M1 \| 8 \| \d+ \|", out.stdout, re.M)  # host-side row: M1 has 8 tensors
    for target in ("target ≤ 1.5%", "target ≤ 1%", "target ≤ 200 µs"):
        assert target in out.stdout


def test_targets_only_runs_the_judged_variants_and_still_gives_every_verdict(tmp_path):
    out, rows = _run(tmp_path, "--targets-only")
    judged = VARIANTS[:6]
    assert [n for n in VARIANTS if n in rows] == judged, out.stdout
    for target in ("target ≤ 1.5%", "target ≤ 1%", "target ≤ 200 µs"):
        assert target in out.stdout
