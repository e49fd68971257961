"""Smoke test of benchmarks/peers.py: a real subprocess in --quick mode writing a copy of the docs.

No timing is asserted: the figures of a 2-round run mean nothing. What is checked is that the
tables are well-formed, every requested variant has a row, installed tools produce numbers, a
missing tool is reported as "not installed" instead of crashing, and only the peers section of
the docs file changes.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "peers.py"
START, END = "<!-- section:peers:start -->", "<!-- section:peers:end -->"

# Variant key → the package it needs (None: torch alone, or gradwatch itself).
NEEDS = {
    "bare": None,
    "clip_grad_norm": None,
    "gw_none": None,
    "gw_norm": None,
    "gw_every10": None,
    "gw_extra": None,
    "wandb_watch_1": "wandb",
    "wandb_watch_100": "wandb",
    "tb_scalars": "tensorboard",
    "tb_histograms": "tensorboard",
    "lightning_grad_norm": "lightning",
    "item_loop": None,
}
LABELS = {
    "bare": "bare step",
    "clip_grad_norm": "torch clip_grad_norm_(1.0)",
    "gw_none": "gradwatch clip=none",
    "gw_norm": "gradwatch clip=norm:1.0",
    "gw_every10": "gradwatch clip=none every=10",
    "gw_extra": "gradwatch clip=none extra stats",
    "wandb_watch_1": "wandb.watch(log_freq=1)",
    "wandb_watch_100": "wandb.watch(log_freq=100)",
    "tb_scalars": "TensorBoard add_scalar per tensor",
    "tb_histograms": "TensorBoard add_histogram per tensor",
    "lightning_grad_norm": "Lightning grad_norm + CSVLogger",
    "item_loop": "per-tensor .item() loop → SQLite",
}
PCT = r"[+-]\d+\.\d%"


def _installed(key: str) -> bool:
    pkg = NEEDS[key]
    return pkg is None or importlib.util.find_spec(pkg) is not None


def _run(args, tmp_path, env_extra=None, timeout=600):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _table(lines: list[str], after: str) -> list[list[str]]:
    """The markdown table that follows the heading ``after``, as rows of cells (header first)."""
    i = lines.index(after)
    rows = []
    for line in lines[i + 1 :]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, sep, *body = rows
    assert all(re.fullmatch(r"-+", c) for c in sep), sep
    assert all(len(r) == len(header) for r in body), "ragged table"
    return [header, *body]


@pytest.mark.slow
def test_quick_run_writes_a_well_formed_peers_section(tmp_path):
    keys = [k for k in NEEDS if _installed(k)]
    docs = tmp_path / "benchmarks.md"
    original = f"# Benchmarks\n\nintro\n\n{START}\nold text\n{END}\n\n<!-- section:other:start -->\nkeep\n"
    docs.write_text(original)

    proc = _run(["--variants", ",".join(keys), "--docs", str(docs)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    text = docs.read_text()
    head, rest = text.split(START)
    section, tail = rest.split(END)
    assert head == original.split(START)[0] and tail == original.split(END)[1], "outside the section changed"
    assert "old text" not in section
    lines = section.splitlines()
    assert "python benchmarks/peers.py --quick" in section  # the exact command is recorded
    assert "CPU:" in section and "versions:" in section and "torch" in section

    steps = _table(lines, "### Step time")
    assert steps[0] == ["variant", "M1 ms", "M1 Δ vs bare (95% CI)", "M1 × gw"]
    by_label = {r[0]: r[1:] for r in steps[1:]}
    assert set(by_label) == {LABELS[k] for k in keys}
    for key in keys:
        ms, delta, ratio = by_label[LABELS[key]]
        assert float(ms) > 0, (key, ms)
        if key == "bare":
            assert delta == "(reference)"
        else:
            assert re.fullmatch(rf"{PCT} \({PCT}, {PCT}\)", delta), (key, delta)
        assert re.fullmatch(r"\d+\.\d\d", ratio), (key, ratio)
    assert by_label[LABELS["gw_none"]][2] == "1.00"  # the reference of the ratio column

    calls = _table(lines, "### Time inside the monitoring call")
    assert {r[0] for r in calls[1:]} == {LABELS[k] for k in keys if k != "bare"}
    for label, value in calls[1:]:
        assert re.fullmatch(r"\d+\.\d\d( \+ hooks in backward)?", value), (label, value)

    stored = _table(lines, "### Bytes on disk per step")
    for label, value in stored[1:]:
        assert re.fullmatch(r"[\d,]+", value), (label, value)

    matrix = {
        r[0]: r[1:] for r in _table(lines, "### What each tool records (read back from its own files)")[1:]
    }
    # Facts that hold by each tool's design, which the probe must have read back from the files.
    gw = matrix["gradwatch"]
    assert gw[:5] == ["yes", "yes", gw[2], "yes", "yes"] and gw[2].startswith("yes")
    assert matrix["clip_grad_norm_"][:5] == ["no"] * 5
    assert matrix[".item() loop → SQLite"][0] == "yes" and matrix[".item() loop → SQLite"][4] == "yes"
    if _installed("wandb_watch_1"):
        assert matrix["wandb.watch"][0] == "histogram only"
    if _installed("tb_scalars"):
        assert matrix["TensorBoard scalars"][0] == "yes" and matrix["TensorBoard scalars"][4] == "no"
    if _installed("lightning_grad_norm"):
        assert matrix["Lightning grad_norm"][:2] == ["yes", "yes"]
    assert "### Targets (issue 5)" in section


def test_a_missing_tool_is_reported_not_installed(tmp_path):
    # A package on PYTHONPATH that fails to import stands for an absent wandb, in a real subprocess.
    shim = tmp_path / "shim" / "wandb"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('wandb is not installed here', name='wandb')\n")

    proc = _run(
        ["--variants", "bare,wandb_watch_1", "--no-docs", "--no-probe"],
        tmp_path,
        env_extra={"PYTHONPATH": str(tmp_path / "shim")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r[0]: r[1:] for r in _table(proc.stdout.splitlines(), "### Step time")[1:]}
    assert rows["wandb.watch(log_freq=1)"][0] == "not installed (wandb)"
    assert float(rows["bare step"][0]) > 0
