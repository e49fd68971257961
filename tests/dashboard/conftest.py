"""Dashboard fixtures: real SQLite files written through the real store writer, and AppTest helpers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import streamlit as st

from tracker.store import Store

APP = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"
LAYERS = ["conv1.weight", "conv1.bias", "fc.weight"]
N_STEPS = 60
SPIKE_STEP = 40
NAN_STEP = 50
NAN_LAYER = 2  # fc.weight


@dataclass
class Recorded:
    """What the fixture wrote: the oracle the page tests compare against."""

    path: Path
    ids: dict[str, int] = field(default_factory=dict)
    norms: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (steps, layers)
    total: dict[str, np.ndarray] = field(default_factory=dict)
    loss: dict[str, np.ndarray] = field(default_factory=dict)
    clipped: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    config: dict[str, dict] = field(default_factory=dict)


def _write_run(store: Store, rec: Recorded, name: str, *, clip: str, threshold: float | None, seed: int,
               lr: float, parent: str | None = None) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    norms = rng.lognormal(mean=-1.0, sigma=0.3, size=(N_STEPS, len(LAYERS)))
    norms[SPIKE_STEP] *= 40.0  # a spike the charts must not lose
    norms[NAN_STEP, NAN_LAYER] = math.nan
    total = np.sqrt(np.sum(norms**2, axis=1))
    loss = 2.3 * np.exp(-np.arange(N_STEPS) / 30) + rng.normal(0, 0.01, N_STEPS)
    clipped = np.nan_to_num(total, nan=0.0) > threshold if threshold is not None else np.zeros(N_STEPS, bool)
    config = {"task": "keywords", "model": "seed-cnn", "lr": lr, "epochs": 1, "batch_size": 8, "clip": clip}
    run_id = store.create_run(
        name=name,
        config=config,
        clip=clip,
        clip_source="argument",
        parent_id=rec.ids[parent] if parent else None,
        argv=["-m", "trainer", "--clip", clip],
        cwd=str(rec.path.parent),
    )
    store.add_layers(run_id, [dict(id=i, name=n, shape=[4, 4]) for i, n in enumerate(LAYERS)])
    writer = store.writer(run_id)
    for step in range(N_STEPS):
        row = norms[step].tolist()
        after = total[step] * min(1.0, threshold / total[step]) if clipped[step] else total[step]
        writer.add_step(
            step=step,
            norms=row,
            total_norm=float(total[step]),
            total_norm_after=float(after),
            loss=float(loss[step]),
            clipped=bool(clipped[step]),
            threshold=threshold,
            first_nonfinite_layer=NAN_LAYER if step == NAN_STEP else None,
        )
        if threshold is not None:
            writer.add_clip_events([dict(step=step, strategy=clip.split(":")[0], threshold=threshold,
                                         norm_before=float(total[step]), norm_after=float(after),
                                         coef=float(after / total[step]) if total[step] else 1.0,
                                         clipped=bool(clipped[step]))])  # fmt: skip
        if step == NAN_STEP:
            writer.add_nonfinite(step, [(NAN_LAYER, True, False)])
    metrics = {}
    for step in (19, 39, 59):
        values = {"train_acc": 0.5 + step / 200, "val_acc": 0.45 + step / 250 + seed / 100}
        values["val_loss"] = 2.0 - step / 60
        values["gen_gap"] = values["train_acc"] - values["val_acc"]
        writer.add_metrics(step, values)
        for k, v in values.items():
            metrics.setdefault(k, []).append((step, v))
    writer.close(status="finished")
    rec.ids[name] = run_id
    rec.norms[name], rec.total[name], rec.loss[name], rec.clipped[name] = norms, total, loss, clipped
    rec.metrics[name], rec.config[name] = metrics, config


@pytest.fixture
def recorded(tmp_path) -> Recorded:
    """Two finished runs: ``base`` (clip none) and its relaunch ``child`` (norm:0.5, another lr)."""
    rec = Recorded(path=tmp_path / "gradwatch.db")
    with Store.open(rec.path, create=True) as store:
        _write_run(store, rec, "base", clip="none", threshold=None, seed=0, lr=0.001)
        _write_run(store, rec, "child", clip="norm:0.5", threshold=0.5, seed=1, lr=0.002, parent="base")
    return rec


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches(monkeypatch, tmp_path):
    """Each AppTest starts without the previous test's cached stores, data and launcher."""
    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("GRADWATCH_CACHE", str(tmp_path / "corpus-cache"))
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def app(monkeypatch):
    """An AppTest factory on a given database path (passed the way users do: $GRADWATCH_DB)."""
    from streamlit.testing.v1 import AppTest

    def make(db: Path | str) -> AppTest:
        monkeypatch.setenv("GRADWATCH_DB", str(db))
        return AppTest.from_file(str(APP), default_timeout=60)

    assert os.path.exists(APP)
    return make
