"""Shared by the dashboard tests: a recorded database written through the real store writer (the oracle is
what was written), and readers of what AppTest rendered."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def write_run(store: Store, rec: Recorded, name: str, *, clip: str, threshold: float | None, seed: int,
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


# ---- reading what a page rendered ----


def figure(at, key: str) -> dict:
    """The plotly figure (as JSON) of the chart rendered with ``key``."""
    for el in at.get("plotly_chart"):
        if el.proto.id.endswith(f"-{key}"):
            return json.loads(el.proto.spec)
    raise AssertionError(
        f"no plotly chart with key {key!r}; have {[e.proto.id for e in at.get('plotly_chart')]}"
    )


def trace(fig: dict, name: str) -> dict:
    for t in fig["data"]:
        if t.get("name") == name:
            return t
    raise AssertionError(f"no trace {name!r}; have {[t.get('name') for t in fig['data']]}")


def values(seq) -> np.ndarray:
    """Plotly JSON arrays (lists, with null for NaN, or typed-array dicts) as float numpy arrays."""
    if isinstance(seq, dict) and "bdata" in seq:  # plotly >= 6 encodes numpy arrays as base64 typed arrays
        import base64

        arr = np.frombuffer(base64.b64decode(seq["bdata"]), dtype=np.dtype(seq["dtype"]))
        shape = seq.get("shape")
        if isinstance(shape, str):  # "3, 60"
            shape = tuple(int(n) for n in shape.split(","))
        return (arr.reshape(shape) if shape else arr).astype(float)
    return np.array([np.nan if v is None else v for v in np.ravel(seq)], dtype=float).reshape(np.shape(seq))


def dataframe_with(at, column: str):
    """The first dataframe element that has ``column``."""
    for el in at.dataframe:
        if column in el.value.columns:
            return el.value
    raise AssertionError(f"no dataframe with column {column!r}")


def texts(at, kind: str = "error") -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def open_tab(at, label: str):
    """Open a tab of the Run page (its tabs are lazy: only the open one renders), as a click would."""
    at.session_state["run_tab"] = label
    return at.run()


def open_page(at, page: str, **requests):
    """Start the app, put ``requests`` in its session state (what a click on another page would), switch
    to ``page`` (e.g. ``views/run.py``) and check that it rendered without an exception."""
    at.run()
    for key, value in requests.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# A training process stand-in for the Stop tests: records a running run and, on SIGTERM, ends it "stopped"
# and closes its connections, as the trainer does (the last connection to close checkpoints and deletes
# the WAL). Prints "ready" once its first step is in the file. Arguments: the db; optionally a file to wait
# for before ending (a test can look at the page while the stop is under way) and the exit code (143 =
# 128 + SIGTERM is what the tracker exits with on a SIGTERM; the trainer exits 0).
STOPPABLE = """
import os, signal, sys, time
from tracker.store import Store
store = Store.open(sys.argv[1], create=True)
run = store.create_run(name="long")
writer = store.writer(run, heartbeat_every=0.5)
release = sys.argv[2] if len(sys.argv) > 2 else None
code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
def stop(*_):
    while release and not os.path.exists(release):
        time.sleep(0.05)
    writer.close(status="stopped")
    store.close()
    sys.exit(code)
signal.signal(signal.SIGTERM, stop)
writer.add_step(step=0, norms=[], total_norm=1.0)
writer.flush()
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def run_fragments(at):
    """Rerun only the page's fragments, as their ``run_every`` timer does in a browser (AppTest's ``run()``
    reruns the whole page, and ``run_every`` does not tick by itself there). The live panels' code then
    runs without the page around it, as it does between two reloads."""
    from unittest import mock

    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.testing.v1 import local_script_runner

    ids = list(at._fragment_storage._fragments)  # (AppTest keeps the fragments between its runs)
    assert ids, "the page registered no fragment"

    def fragment_rerun(**kwargs):  # (the runner's initial request too: run()'s is merged into it)
        return RerunData(fragment_id_queue=ids, is_auto_rerun=True, **kwargs)

    with mock.patch.object(local_script_runner, "RerunData", fragment_rerun):
        return at.run()


def record_script(tmp_path: Path, monkeypatch, source: str, name: str = "gan.py") -> tuple[Path, list[dict]]:
    """Run ``source`` as ``python <name>`` in ``tmp_path`` with ``GRADWATCH_DB`` set there: the database and
    the runs it recorded (``Store.runs()`` rows, by id)."""
    (tmp_path / name).write_text(source)
    db = tmp_path / "g.db"
    monkeypatch.setenv("GRADWATCH_DB", str(db))
    done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Store.open(db, readonly=True) as store:
        return db, store.runs().to_dict("records")
