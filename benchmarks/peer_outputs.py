"""What each tool actually stored: read its output files back and derive the capability matrix.

A probe trains a tiny model for a few steps under each tool, with gradients large enough to be
clipped at 1.0 and, on the last step, a NaN injected into the gradients of the first layer only
(``0.weight`` and ``0.bias``). Each reader below parses the tool's own files (SQLite, wandb's
``.wandb`` record log, TensorBoard event files, Lightning's CSV) into the same ``Recorded`` form;
the matrix is computed from that, not from documentation. Only "live dashboard" is documented
behaviour (it is a property of the tool's viewer, not of its files).
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["CAPABILITIES", "LIVE_VIEWER", "Recorded", "capabilities", "probe", "read_outputs"]

PROBE_STEPS = 4
NAN_STEP = PROBE_STEPS - 1  # last, so no NaN weights feed later steps
POISONED = {"0.weight", "0.bias"}

CAPABILITIES = (
    ("per_layer", "per-layer norm every step"),
    ("global", "global norm"),
    ("clip_events", "clip events"),
    ("nan_location", "NaN/Inf location"),
    ("sql", "queryable with SQL"),
    ("live", "live dashboard¹"),
)

# Documented viewers (not probed): what a user can open while training runs.
LIVE_VIEWER = {
    "gradwatch": "yes (`streamlit run dashboard`)",
    "wandb.watch": "no (offline: `wandb sync` to a server first)",
    "TensorBoard scalars": "yes (`tensorboard --logdir`)",
    "TensorBoard histograms": "yes (`tensorboard --logdir`)",
    "Lightning grad_norm": "no (CSV file)",
    ".item() loop → SQLite": "no (own SQL)",
    "clip_grad_norm_": "no (stores nothing)",
}


@dataclass
class Recorded:
    """A tool's stored gradient information, normalised: names are ``named_parameters()`` names."""

    how: str  # one line: the form the gradient information takes in the files
    layer_norms: dict[str, dict[int, float | None]] = field(default_factory=dict)  # name → step → norm
    total_norms: dict[int, float] = field(default_factory=dict)
    clip_events: int = 0
    nonfinite: dict[int, set[str]] = field(default_factory=dict)  # step → layers marked non-finite
    sql: bool = False


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


# ---------------------------------------------------------------------------------- readers
def read_gradwatch(workdir: Path) -> Recorded:
    path = workdir / "gradwatch.db"
    rec = Recorded("one REAL per tensor per step (`grad_norms`), steps, clip events, non-finite rows")
    rec.sql = _is_sqlite(path)
    db = sqlite3.connect(path)
    try:
        # Table and column names from docs/schema.md: plain SQL is the point of this column.
        names = dict(db.execute("SELECT id, name FROM layers"))
        for layer_id, step, norm in db.execute("SELECT layer_id, step, norm FROM grad_norms"):
            rec.layer_norms.setdefault(names[layer_id], {})[step] = norm
        rec.total_norms = dict(db.execute("SELECT step, total_norm FROM steps"))
        rec.clip_events = db.execute("SELECT COUNT(*) FROM clip_events").fetchone()[0]
        for step, layer_id in db.execute("SELECT step, layer_id FROM nonfinite"):
            rec.nonfinite.setdefault(step, set()).add(names[layer_id])
    finally:
        db.close()
    return rec


def _wandb_records(path: Path):
    """Yield the protobuf payloads of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header; the file starts with a 7-byte W&B header)."""
    data = path.read_bytes()
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk
        elif kind == 0 and length == 0:
            pos += block - pos % block


def read_wandb(workdir: Path) -> Recorded:
    from wandb.proto import wandb_internal_pb2

    rec = Recorded("a 64-bin histogram per tensor per logged step (NaN/Inf elements dropped)")
    # wandb-core streams each step's history in several partial records whose `_step` may come
    # before or after the histograms, so histograms are numbered per tensor in file order instead.
    hists: dict[str, list[dict]] = {}
    for path in workdir.rglob("*.wandb"):
        for payload in _wandb_records(path):
            r = wandb_internal_pb2.Record()
            r.ParseFromString(payload)
            if r.WhichOneof("record_type") != "history":
                continue
            for it in r.history.item:
                key = list(it.nested_key) or [it.key]
                if len(key) != 2 or not key[0].startswith("gradients/"):
                    continue
                entries = hists.setdefault(key[0].removeprefix("gradients/"), [{}])
                if key[1] in entries[-1]:
                    entries.append({})
                entries[-1][key[1]] = json.loads(it.value_json)
    for name, entries in hists.items():
        rec.layer_norms[name] = {}  # seen, but a histogram holds no norm
        for i, h in enumerate(entries):
            numbers = [*h.get("values", []), *h.get("bins", [])]
            if not all(_finite(float(x)) for x in numbers):
                rec.nonfinite.setdefault(i, set()).add(name)
    return rec


def _tb_events(workdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def read_tensorboard_scalars(workdir: Path) -> Recorded:
    rec = Recorded("one float scalar per tensor per step in a protobuf event file")
    acc = _tb_events(workdir)
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("grad_norm/"):
            name = tag.removeprefix("grad_norm/")
            for ev in acc.Scalars(tag):
                rec.layer_norms.setdefault(name, {})[ev.step] = ev.value
                if not _finite(ev.value):
                    rec.nonfinite.setdefault(ev.step, set()).add(name)
    return rec


def read_tensorboard_histograms(workdir: Path) -> Recorded:
    rec = Recorded("a histogram per tensor per step; its sum_squares gives the norm exactly")
    acc = _tb_events(workdir)
    for tag in acc.Tags()["histograms"]:
        if tag.startswith("grad/"):
            name = tag.removeprefix("grad/")
            for ev in acc.Histograms(tag):
                h = ev.histogram_value
                norm = math.sqrt(h.sum_squares) if _finite(h.sum_squares) else float("nan")
                rec.layer_norms.setdefault(name, {})[ev.step] = norm
                if not all(_finite(x) for x in (h.min, h.max, h.sum_squares)):
                    rec.nonfinite.setdefault(ev.step, set()).add(name)
    return rec


def read_lightning_csv(workdir: Path) -> Recorded:
    rec = Recorded("one CSV column per tensor (`grad_2.0_norm/<name>`) plus the total, a row per step")
    for path in workdir.rglob("metrics.csv"):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for key, text in row.items():
                    if not text or not key.startswith("grad_2.0_norm"):
                        continue
                    value = float(text)
                    if key == "grad_2.0_norm_total":
                        rec.total_norms[step] = value
                        continue
                    name = key.removeprefix("grad_2.0_norm/")
                    rec.layer_norms.setdefault(name, {})[step] = value
                    if not _finite(value):
                        rec.nonfinite.setdefault(step, set()).add(name)
    return rec


def read_item_sqlite(workdir: Path) -> Recorded:
    path = workdir / "norms.db"
    rec = Recorded("one REAL per tensor per step; SQLite stores NaN as NULL")
    rec.sql = _is_sqlite(path)
    db = sqlite3.connect(path)
    try:
        names = dict(db.execute("SELECT id, name FROM layers"))
        for step, layer, norm in db.execute("SELECT step, layer, norm FROM norms"):
            rec.layer_norms.setdefault(names[layer], {})[step] = norm
            if not _finite(norm):
                rec.nonfinite.setdefault(step, set()).add(names[layer])
    finally:
        db.close()
    return rec


def read_nothing(workdir: Path) -> Recorded:
    return Recorded("nothing (returns the total norm to the caller)")


READERS = {
    "gradwatch": read_gradwatch,
    "wandb.watch": read_wandb,
    "TensorBoard scalars": read_tensorboard_scalars,
    "TensorBoard histograms": read_tensorboard_histograms,
    "Lightning grad_norm": read_lightning_csv,
    ".item() loop → SQLite": read_item_sqlite,
    "clip_grad_norm_": read_nothing,
}


def read_outputs(tool: str, workdir: Path) -> Recorded:
    return READERS[tool](workdir)


# ------------------------------------------------------------------------------------- probe
class _NaNGrad(torch.autograd.Function):
    """Identity forward; in backward, when armed, one NaN in the incoming gradient. Only the
    layers *before* this point (``0.weight``, ``0.bias``) then get NaN gradients."""

    @staticmethod
    def forward(ctx, x, armed):
        ctx.armed = armed
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.armed:
            grad = grad.clone()
            grad[0, 0] = float("nan")
        return grad, None


class _Poison(nn.Module):
    armed = False

    def forward(self, x):
        return _NaNGrad.apply(x, self.armed)


def probe(variant, workdir: Path) -> Recorded:
    """Train a tiny model ``PROBE_STEPS`` steps under ``variant``; read back what it stored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), _Poison(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    variant.start(model, workdir)
    variant.before_block()
    for step in range(PROBE_STEPS):
        model[2].armed = step == NAN_STEP
        opt.zero_grad(set_to_none=True)
        # ×100: global norm far above 1.0, so a norm:1.0 clip acts on every step.
        loss = 100 * nn.functional.mse_loss(model(x), y)
        loss.backward()
        variant.after_backward(loss, step)
        opt.step()
    variant.finish()
    return read_outputs(variant.tool, workdir)


def capabilities(rec: Recorded, tool: str) -> dict[str, str]:
    """The capability matrix row for one tool, from what ``probe`` read back."""
    names = {"0.weight", "0.bias", "3.weight", "3.bias"}
    steps = set(range(PROBE_STEPS))
    per_layer = names <= set(rec.layer_norms) and all(
        set(rec.layer_norms[n]) >= steps for n in names if n in rec.layer_norms
    )
    seen = rec.nonfinite.get(NAN_STEP, set())
    return {
        "per_layer": "yes" if per_layer else ("histogram only" if rec.layer_norms else "no"),
        # The NaN step's global norm is NaN (SQLite stores it as NULL): judge the finite steps.
        "global": "yes" if all(_finite(rec.total_norms.get(s)) for s in range(NAN_STEP)) else "no",
        "clip_events": f"yes ({rec.clip_events} rows)" if rec.clip_events else "no",
        "nan_location": "yes" if seen == POISONED else ("partly" if seen & POISONED else "no"),
        "sql": "yes" if rec.sql else "no",
        "live": LIVE_VIEWER.get(tool, "?"),
    }
