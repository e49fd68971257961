"""Read queries for the dashboard and for users: every method returns a pandas DataFrame (or a dict).

pandas is imported lazily so that the training side (tracker → store) does not need it. Large runs are
read through ``grad_norm_blocks``: a 100k-step × 100-layer run draws from ~1% of its rows, with raw rows
for the steps at the edges of the requested range that no whole block covers, so the result is exact.
Only blocks wholly inside [lo, hi] are read, with hi at most the run's last step: such a block is complete,
and the writer adds a block in the same transaction as the step that completes it, so it is in the file
even if the writer commits between our reads (blocks are only ever added).
"""

import json
import os
import socket
import sqlite3
import time

from . import envelope
from .blocks import LAYERS_WITH_ROWS
from .errors import RunNotFound
from .schema import LATER_COLUMNS

__all__ = ["Reads", "derive_status", "pid_alive", "process_start_time"]

# Per-run counts since the last call (markers :su/:cu = last step already counted), in one statement so
# that all of it comes from one snapshot. A live run costs a look at its newest rows, not a full scan.
_RUN_INCREMENT = """
SELECT (SELECT count(*) FROM steps WHERE run_id = :r AND step > :su),
       (SELECT max(step) FROM steps WHERE run_id = :r),
       (SELECT total(clipped) FROM steps WHERE run_id = :r AND step > :su),
       (SELECT count(clipped) FROM steps WHERE run_id = :r AND step > :su),
       (SELECT count(*) FROM clip_events WHERE run_id = :r AND step > :cu),
       (SELECT max(step) FROM clip_events WHERE run_id = :r),
       (SELECT total(clipped) FROM clip_events WHERE run_id = :r AND step > :cu),
       (SELECT min(step) FROM nonfinite WHERE run_id = :r)
"""
_FINAL_STATUSES = ("finished", "failed", "stopped")
_FINAL_METRICS = """
SELECT m.run_id, m.name, m.value
FROM metrics m
JOIN (SELECT run_id, name, max(step) AS step FROM metrics {where} GROUP BY run_id, name) last
    USING (run_id, name, step)
"""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (an exited, unreaped zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS): trust kill()
        return True


def process_start_time(pid: int) -> float | None:
    """When the process ``pid`` of this machine started (Unix time, to ~1 s), or None where unknown (no
    such process, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime: ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def derive_status(
    status, heartbeat_at, pid, host, *, now: float, stale_after: float, this_host: str, started=None
) -> str:
    """The status to show: "crashed" for a "running" run whose recorded process on this machine is gone,
    or whose heartbeat is older than ``stale_after`` seconds; the recorded status otherwise.

    ``started``: when the recorded process started, as it recorded it (``runs.pid_started_at``). A stale
    heartbeat from a process alive on this machine under that pid *and* start time is a run still running:
    its writer is held up, most often by another process's write lock (a sqlite3 shell, a backup), and
    writes everything once it is released (docs/tracker.md). A process of another start time under that pid
    is another process: the pid was reused, or the run's process lives in another pid namespace (a
    container sharing the host's name); the heartbeat decides then."""
    if status != "running":
        return status
    here = bool(pid) and host == this_host
    if here and not pid_alive(int(pid)):
        return "crashed"
    if heartbeat_at is None or now - heartbeat_at > stale_after:
        if here and started is not None:
            alive_since = process_start_time(int(pid))
            # (the two readings of one process agree to a clock tick; 1 s of slack for /proc's rounding)
            if alive_since is not None and abs(alive_since - started) <= 1.0:
                return "running"
        return "crashed"
    return "running"


def _in(ids) -> str:
    return "(" + ", ".join("?" * len(ids)) + ")"


class Reads:
    """Read methods of Store (needs ``_conn``, ``_lock``, ``path``, ``stale_after``, ``_envelopes``,
    ``_summaries``)."""

    def clear_cache(self) -> None:
        """Forget cached envelopes and run summaries (after rewriting recorded steps of a run)."""
        self._envelopes.clear()
        with self._lock:
            self._summaries.clear()

    # ---- plumbing -----------------------------------------------------------------------------------
    def _fetch(self, sql: str, params=()):
        from .connection import translate

        with self._lock:
            try:
                cur = self._conn.execute(sql, params)
                rows = cur.fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, self.path, "read", readonly=getattr(self, "readonly", False)) from exc
        return [d[0] for d in cur.description], rows

    def _frame(self, sql: str, params=()):
        import pandas as pd

        columns, rows = self._fetch(sql, params)
        return pd.DataFrame.from_records(rows, columns=columns)

    def _require_run(self, run_id: int) -> None:
        if not self._fetch("SELECT 1 FROM runs WHERE id = ?", (run_id,))[1]:
            raise RunNotFound(f"run {run_id!r} is not in {self.path}")

    def _layer_ids(self, run_id: int, layer_ids) -> list[int]:
        if layer_ids is not None:
            return [int(i) for i in layer_ids]
        ids = [r[0] for r in self._fetch("SELECT id FROM layers WHERE run_id = ? ORDER BY id", (run_id,))[1]]
        if not ids:  # layers never registered: every layer that has rows (one index seek per layer)
            ids = [r[0] for r in self._fetch(LAYERS_WITH_ROWS, dict(run=run_id))[1]]
        return ids

    def _generation(self, run_id: int):
        """When the run was last resumed (None: never; also in files that predate the column). What a cache
        of a run's rows holds is valid for one generation: resuming deletes the rows of the steps it redoes.
        """
        columns, rows = self._fetch("SELECT * FROM runs WHERE id = ?", (run_id,))
        return dict(zip(columns, rows[0], strict=True)).get("resumed_at") if rows else None

    def _step_range(self, run_id: int, start, end):
        # Two subqueries: SQLite answers a lone min() or max() with one index seek, both together by a scan.
        lo, hi = self._fetch(
            "SELECT (SELECT min(step) FROM steps WHERE run_id = :r),"
            " (SELECT max(step) FROM steps WHERE run_id = :r)",
            dict(r=run_id),
        )[1][0]
        if lo is None:  # nothing recorded yet (the writer writes a steps row with every step's norms)
            return None
        lo = lo if start is None else int(start)
        # Never past the last recorded step: blocks beyond it are not complete, hence not in the file, and
        # the envelope cache treats buckets below hi as final.
        hi = hi if end is None else min(hi, int(end))
        return (lo, hi) if lo <= hi else None

    # ---- runs -----------------------------------------------------------------------------------------
    def fingerprint(self) -> tuple:
        """The runs' ids and creation times: what tells this file's content from another's at a glance. For
        a reader holding a connection while the file changes: a checkpoint changes neither, another file
        copied over this one (a backup restored in place) does."""
        return tuple(self._fetch("SELECT id, created_at FROM runs ORDER BY id")[1])

    def runs(self, run_ids=None):
        """One row per run, with derived ``status`` (recorded one in ``recorded_status``), n_steps (logged
        steps), last_step, n_clip_events, clip_rate (fraction of clip decisions that clipped; from the
        steps rows when a run has no clip events), first_nonfinite_step, duration_s, config/argv parsed
        from JSON, and one ``final_<metric>`` column per metric name (its value at its last step).

        Counts are kept per run between calls and only rows newer than the last call are read (runs are
        append-only while they write; ``clear_cache()`` after rewriting one)."""
        import pandas as pd

        where, params = "", ()
        if run_ids is not None:
            run_ids = [int(i) for i in ([run_ids] if isinstance(run_ids, int) else run_ids)]
            where, params = f" WHERE id IN {_in(run_ids)}", tuple(run_ids)
        df = self._frame("SELECT * FROM runs" + where + " ORDER BY id", params)
        for name in LATER_COLUMNS:  # a file made before they existed: a missing column reads as NULL
            if name not in df:
                df[name] = None
        generations = df["resumed_at"]
        summary = [
            self._run_summary(int(rid), st in _FINAL_STATUSES, None if pd.isna(gen) else gen)
            for rid, st, gen in zip(df["id"], df["status"], generations, strict=True)
        ]
        extra = pd.DataFrame.from_records(
            summary,
            columns=["n_steps", "last_step", "n_clip_events", "clip_rate", "first_nonfinite_step"],
            index=df.index,
        )
        df = pd.concat([df, extra], axis=1)
        now, host = time.time(), socket.gethostname()
        df.insert(2, "recorded_status", df["status"])
        df["status"] = [
            derive_status(
                s, hb, pid, h, now=now, stale_after=self.stale_after, this_host=host, started=_number(t)
            )
            for s, hb, pid, h, t in zip(
                df["status"], df["heartbeat_at"], df["pid"], df["host"], df["pid_started_at"], strict=True
            )
        ]
        end = df["finished_at"].where(df["finished_at"].notna(), df["heartbeat_at"])
        df["duration_s"] = end - df["created_at"]
        # A cell that is not JSON (written by hand, or damaged) reads as empty, not as an error on every page.
        df["config"] = [_json(c, {}) for c in df["config"]]
        df["argv"] = [_json(a, []) for a in df["argv"]]
        df["env"] = [_json(e, None) for e in df["env"]]
        mwhere = "" if run_ids is None else f"WHERE run_id IN {_in(run_ids)}"
        _, finals = self._fetch(_FINAL_METRICS.format(where=mwhere), params)
        by_name: dict[str, dict] = {}
        for rid, name, value in finals:
            by_name.setdefault(name, {})[rid] = value
        for name in sorted(by_name):
            df["final_" + name] = df["id"].map(by_name[name]).astype(float)
        return df

    def _run_summary(self, run_id: int, final: bool, generation=None) -> tuple:
        with self._lock:
            gen, state = self._summaries.get(run_id, (None, None))
            if gen != generation:  # resumed since: the rows counted so far may be gone
                state = None
            if state is None or not state[-1]:
                su, n, last, s_sum, s_cnt, cu, ev, ev_sum, _, _ = state or (
                    -1,
                    0,
                    None,
                    0.0,
                    0,
                    -1,
                    0,
                    0.0,
                    None,
                    0,
                )
                _, rows = self._fetch(_RUN_INCREMENT, dict(r=run_id, su=su, cu=cu))
                dn, mx, ds, dc, de, cmx, des, first_nf = rows[0]
                state = (
                    su if mx is None else mx, n + dn, mx, s_sum + ds, s_cnt + dc,
                    cu if cmx is None else cmx, ev + de, ev_sum + des, first_nf,
                    final,  # frozen: a finished run's rows were all committed with its status
                )  # fmt: skip
                self._summaries[run_id] = (generation, state)
        _, n, last, s_sum, s_cnt, _, ev, ev_sum, first_nf, _ = state
        rate = ev_sum / ev if ev else (s_sum / s_cnt if s_cnt else float("nan"))
        return n, last, ev, rate, first_nf

    def run(self, run_id: int) -> dict:
        """One run as a dict (the columns of runs())."""
        df = self.runs([run_id])
        if df.empty:
            raise RunNotFound(f"run {run_id!r} is not in {self.path}")
        return {k: (None if _isnan(v) else v) for k, v in df.iloc[0].to_dict().items()}

    def children(self, run_id: int):
        """Runs whose parent_id is ``run_id`` (relaunches of it), as runs() rows."""
        ids = [r[0] for r in self._fetch("SELECT id FROM runs WHERE parent_id = ? ORDER BY id", (run_id,))[1]]
        if not ids:
            return self.runs([-1])
        return self.runs(ids)

    def layers(self, run_id: int):
        """id, name, module (name up to the last dot), shape (list), numel, dtype, trainable (bool)."""
        df = self._frame(
            "SELECT id, name, shape, numel, dtype, trainable FROM layers WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        df.insert(2, "module", [n.rsplit(".", 1)[0] if "." in n else "" for n in df["name"]])
        df["shape"] = [json.loads(s) for s in df["shape"]]
        df["trainable"] = df["trainable"].astype(bool)
        return df

    # ---- per-step series ------------------------------------------------------------------------------
    def steps(self, run_id: int, after_step: int = -1, start=None, end=None):
        """Logged steps with step > after_step (and start <= step <= end): the incremental read."""
        sql = "SELECT * FROM steps WHERE run_id = ? AND step > ?"
        params = [run_id, after_step]
        if start is not None:
            sql, params = sql + " AND step >= ?", params + [start]
        if end is not None:
            sql, params = sql + " AND step <= ?", params + [end]
        return self._frame(sql + " ORDER BY step", params).drop(columns="run_id")

    def step_envelope(self, run_id: int, start=None, end=None, max_points: int = 2000):
        """Global-norm series downsampled to <= max_points buckets of w steps (bucket = step // w):
        step, step_end, total_norm_min/max, total_norm_after_max, loss_mean, threshold_max,
        n_clipped, n_skipped, n_nonfinite, n. Spikes survive: the max of each bucket is kept."""
        import pandas as pd

        columns = [
            "step", "step_end", "total_norm_min", "total_norm_max", "total_norm_after_max", "loss_mean",
            "threshold_max", "n_clipped", "n_skipped", "n_nonfinite", "n",
        ]  # fmt: skip
        rng = self._step_range(run_id, start, end)
        if rng is None:
            return pd.DataFrame(columns=columns)
        lo, hi = rng
        w = envelope.bucket_width(lo, hi, max_points)
        key = ("steps", run_id, self._generation(run_id), start, end, max_points)
        cached = self._envelopes.get(key, w, lo, hi)
        first = lo if cached is None else cached[1]
        fresh = self._frame(
            """SELECT max(step / :w * :w, :lo) AS bucket_start, min(step / :w * :w + :w - 1, :hi) AS step_end,
                   min(total_norm) AS total_norm_min, max(total_norm) AS total_norm_max,
                   max(total_norm_after) AS total_norm_after_max, avg(loss) AS loss_mean,
                   max(threshold) AS threshold_max, total(clipped) AS n_clipped, total(skipped) AS n_skipped,
                   total(nonfinite_count > 0) AS n_nonfinite, count(*) AS n
               FROM steps WHERE run_id = :run AND step BETWEEN :first AND :hi
               GROUP BY step / :w ORDER BY 1""",
            dict(w=w, lo=lo, hi=hi, first=first, run=run_id),
        ).rename(columns={"bucket_start": "step"})
        df = fresh if cached is None or cached[0].empty else pd.concat([cached[0], fresh], ignore_index=True)
        self._envelopes.put(key, w, lo, hi, df)
        out = df.copy(deep=False)  # callers get their own frame; the cached one stays as it is
        out.attrs["bucket_steps"] = w
        return out

    def grad_norms(self, run_id: int, layer_ids=None, after_step: int = -1, start=None, end=None):
        """Raw per-layer norms (layer_id, step, norm; NaN norms read as NaN), step > after_step."""
        ids = self._layer_ids(run_id, layer_ids)
        sql = (
            "SELECT layer_id, step, norm FROM grad_norms "
            f"WHERE run_id = ? AND layer_id IN {_in(ids)} AND step > ?"
        )
        params = [run_id, *ids, after_step]
        if start is not None:
            sql, params = sql + " AND step >= ?", params + [start]
        if end is not None:
            sql, params = sql + " AND step <= ?", params + [end]
        df = self._frame(sql + " ORDER BY layer_id, step", params)
        df["norm"] = df["norm"].astype(float)
        return df

    def grad_norm_envelope(self, run_id: int, layer_ids=None, start=None, end=None, max_points: int = 2000):
        """Per layer, <= max_points buckets of w steps (bucket = step // w; w a multiple of a block size):
        layer_id, step (first step of the bucket within [start, end]), step_end, norm_min, norm_max,
        norm_mean, count (non-NaN norms). Exact: equal to min/max over the raw rows of each bucket.
        ``df.attrs["bucket_steps"]`` is w."""
        if not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points={max_points!r}; accepted: an int >= 1")
        import pandas as pd

        ids = self._layer_ids(run_id, layer_ids)
        rng = self._step_range(run_id, start, end)
        if rng is None or not ids:
            return pd.DataFrame(columns=envelope.COLUMNS)
        lo, hi = rng
        w = envelope.plan(lo, hi, max_points)
        key = ("norms", run_id, self._generation(run_id), tuple(ids), start, end, max_points)
        cached = self._envelopes.get(key, w, lo, hi)
        first = lo if cached is None else cached[1]
        # A tail read starts on a bucket edge, a multiple of w and so of the block size.
        sql, params = envelope.envelope_sql(len(ids), first, hi, w)
        params.update(run=run_id, **{f"l{i}": lid for i, lid in enumerate(ids)})
        fresh = self._frame(sql, params)
        df = fresh if cached is None or cached[0].empty else pd.concat([cached[0], fresh], ignore_index=True)
        if cached is not None:  # cached rows precede the fresh ones within a layer: a stable sort by layer
            df = df.sort_values("layer_id", kind="stable", ignore_index=True)
        df["norm_min"] = df["norm_min"].astype(float)
        df["norm_max"] = df["norm_max"].astype(float)
        df["norm_mean"] = df["norm_mean"].astype(float)
        self._envelopes.put(key, w, lo, hi, df)
        out = df.copy(deep=False)  # callers get their own frame; the cached one stays as it is
        out.attrs["bucket_steps"] = w
        return out

    def heatmap(self, run_id: int, start=None, end=None, max_columns: int = 200, layer_ids=None):
        """Layer × step-bucket maximum norm, long form: layer_id, step, step_end, norm_max (<= max_columns
        buckets per layer, the same bucket edges for every layer). Plot log10(norm_max)."""
        df = self.grad_norm_envelope(run_id, layer_ids, start, end, max_points=max_columns)
        out = df[["layer_id", "step", "step_end", "norm_max"]].copy()
        out.attrs.update(df.attrs)
        return out

    def step_norms(self, run_id: int, step: int | None = None):
        """Gradient flow at one step: per layer id, name, module, norm, extra statistics (NaN when not
        recorded), has_nan, has_inf. ``step`` None = the last logged step; a step that was not logged
        resolves to the last logged step before it (the chosen step is in ``df.attrs["step"]``)."""
        sql = "SELECT max(step) FROM steps WHERE run_id = ?" + ("" if step is None else " AND step <= ?")
        found = self._fetch(sql, (run_id,) if step is None else (run_id, step))[1][0][0]
        ids = self._layer_ids(run_id, None)
        df = self._frame(
            f"""SELECT g.layer_id, l.name, g.norm, s.weight_norm, s.update_ratio, s.max_abs,
                       coalesce(n.has_nan, 0) AS has_nan, coalesce(n.has_inf, 0) AS has_inf
                FROM grad_norms g
                LEFT JOIN layers l ON l.run_id = g.run_id AND l.id = g.layer_id
                LEFT JOIN grad_stats s ON s.run_id = g.run_id AND s.layer_id = g.layer_id AND s.step = g.step
                LEFT JOIN nonfinite n ON n.run_id = g.run_id AND n.step = g.step AND n.layer_id = g.layer_id
                WHERE g.run_id = ? AND g.layer_id IN {_in(ids)} AND g.step = ?
                ORDER BY g.layer_id""",
            (run_id, *ids, -1 if found is None else found),
        )
        df.insert(
            2, "module", [n.rsplit(".", 1)[0] if isinstance(n, str) and "." in n else "" for n in df["name"]]
        )
        for c in ("norm", "weight_norm", "update_ratio", "max_abs"):
            df[c] = df[c].astype(float)
        df["has_nan"] = df["has_nan"].astype(bool)
        df["has_inf"] = df["has_inf"].astype(bool)
        df.attrs["step"] = found
        return df

    # ---- events and metrics -----------------------------------------------------------------------------
    def clip_events(self, run_id: int, after_step: int = -1):
        """Clip decisions (one per step): step, strategy, threshold, norm_before, norm_after, coef, clipped,
        n_clipped, n_tensors."""
        return self._frame(
            "SELECT * FROM clip_events WHERE run_id = ? AND step > ? ORDER BY step", (run_id, after_step)
        ).drop(columns="run_id")

    def nonfinite(self, run_id: int, after_step: int = -1):
        """Layers with NaN/Inf gradients: step, layer_id, name, has_nan, has_inf (first one first)."""
        df = self._frame(
            """SELECT n.step, n.layer_id, l.name, n.has_nan, n.has_inf FROM nonfinite n
               LEFT JOIN layers l ON l.run_id = n.run_id AND l.id = n.layer_id
               WHERE n.run_id = ? AND n.step > ? ORDER BY n.step, n.layer_id""",
            (run_id, after_step),
        )
        df["has_nan"] = df["has_nan"].astype(bool)
        df["has_inf"] = df["has_inf"].astype(bool)
        return df

    def metrics(self, run_ids, after_step: int = -1, names=None):
        """Long form run_id, name, step, value, time for one run id or a list, step > after_step."""
        ids = [int(run_ids)] if isinstance(run_ids, int) else [int(i) for i in run_ids]
        sql = f"SELECT run_id, name, step, value, time FROM metrics WHERE run_id IN {_in(ids)} AND step > ?"
        params = [*ids, after_step]
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            sql, params = sql + f" AND name IN {_in(names)}", params + names
        df = self._frame(sql + " ORDER BY run_id, name, step", params)
        df["value"] = df["value"].astype(float)
        return df


def _json(text, default):
    """``text`` parsed as JSON; ``default`` for NULL or a cell that is not JSON (of the expected type)."""
    if not isinstance(text, str):
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return default
    return value if default is None or isinstance(value, type(default)) else default


def _isnan(v) -> bool:
    return isinstance(v, float) and v != v


def _number(v) -> float | None:
    """A nullable REAL column's value from a DataFrame (None or NaN for NULL) as a float or None."""
    return None if v is None or _isnan(v) else float(v)
