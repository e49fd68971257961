"""Smoke test of benchmarks/norm_read.py: a real subprocess with two small sizes and a few repeats.

No timing is asserted. What is checked: the script runs with this tree's tracker, prints a row per size, and
its error columns show that both reads agree with float64 to float32 precision (the oracle is the float64
norm the script computes itself).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "norm_read.py"


def test_norm_read_prints_a_row_per_size_with_small_errors(tmp_path):
    args = ["--sizes", "1024,40000", "--tensors", "3", "--repeats", "2", "--evict-mib", "8"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    rows = [
        line.split("|")[1:-1]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "elements" not in line
    ]
    assert [r[0].strip() for r in rows] == ["1,024", "40,000"]
    assert [r[-1].strip() for r in rows] == ["foreach", "dot"]  # 40,000 >= DOT_MIN_NUMEL
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0
        assert float(r[5]) < 1e-4 and float(r[6]) < 1e-4
