"""The SQLite schema (DDL), its version, and the checks that decide whether a file is ours.

docs/schema.md describes every column; keep the two in step. Version policy: SCHEMA_VERSION grows by
one for every incompatible change; a file with a newer version is refused (SchemaTooNew) and a file with
an older one is refused too (SchemaTooOld) until a migration is written — the store never rewrites a
user's file silently.
"""

import sqlite3

from .errors import ForeignDatabase, SchemaTooNew, SchemaTooOld

__all__ = [
    "SCHEMA_VERSION",
    "APPLICATION",
    "BLOCK_SIZES",
    "LATER_COLUMNS",
    "RESUME_COLUMNS",
    "ensure_columns",
    "TABLES",
    "DDL",
    "create_schema",
    "check_schema",
]

SCHEMA_VERSION = 1
APPLICATION = "gradwatch"
# grad_norm_blocks keeps min/max/sum/count per layer over blocks of these many steps (block = step // size).
# Several levels so that a read uses the coarsest one that tiles its buckets: for 100k steps, 2,000 points
# per trace read ~1.6k rows of 64-step blocks per layer; a 200-column heatmap ~400 of 256-step blocks.
# Only complete blocks are stored, each written once by the writer (see blocks.py): ~8.4% more rows.
BLOCK_SIZES = (16, 64, 256, 1024)

# Nullable columns of runs added after files of schema version 1 existed (older gradwatch versions ignore
# them; docs/schema.md, version policy): a file made before them gets the resume columns when a run in it is
# first resumed, pid_started_at and env when a run is added to it; readers read a missing one as NULL.
RESUME_COLUMNS = {"resumed_at": "REAL", "resumed_from_step": "INTEGER"}
LATER_COLUMNS = {**RESUME_COLUMNS, "pid_started_at": "REAL", "env": "TEXT"}

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'finished', 'failed', 'stopped', 'crashed')),
    config            TEXT NOT NULL DEFAULT '{}',
    clip              TEXT,
    clip_source       TEXT,
    parent_id         INTEGER REFERENCES runs(id),
    argv              TEXT NOT NULL DEFAULT '[]',
    cwd               TEXT,
    env               TEXT,
    python            TEXT,
    pid               INTEGER,
    pid_started_at    REAL,
    host              TEXT,
    every             INTEGER NOT NULL DEFAULT 1,
    nonfinite         TEXT,
    world_size        INTEGER NOT NULL DEFAULT 1,
    created_at        REAL NOT NULL,
    heartbeat_at      REAL,
    finished_at       REAL,
    error             TEXT,
    stop_requested_at REAL,
    resumed_at        REAL,
    resumed_from_step INTEGER
);
CREATE INDEX IF NOT EXISTS runs_parent ON runs (parent_id);
CREATE TABLE IF NOT EXISTS layers (
    run_id    INTEGER NOT NULL,
    id        INTEGER NOT NULL,
    name      TEXT NOT NULL,
    shape     TEXT NOT NULL DEFAULT '[]',
    numel     INTEGER,
    dtype     TEXT,
    trainable INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    run_id                INTEGER NOT NULL,
    step                  INTEGER NOT NULL,
    time                  REAL,
    loss                  REAL,
    total_norm            REAL,
    total_norm_after      REAL,
    clipped               INTEGER,
    coef                  REAL,
    threshold             REAL,
    skipped               INTEGER NOT NULL DEFAULT 0,
    nonfinite_count       INTEGER NOT NULL DEFAULT 0,
    first_nonfinite_layer INTEGER,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grad_norms (
    run_id   INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    norm     REAL,
    PRIMARY KEY (run_id, layer_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grad_stats (
    run_id       INTEGER NOT NULL,
    layer_id     INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    weight_norm  REAL,
    update_ratio REAL,
    max_abs      REAL,
    PRIMARY KEY (run_id, layer_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grad_norm_blocks (
    run_id   INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    block    INTEGER NOT NULL,
    norm_min   REAL,
    norm_max   REAL,
    norm_sum   REAL NOT NULL,
    norm_count INTEGER NOT NULL,
    PRIMARY KEY (run_id, size, layer_id, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clip_events (
    run_id      INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    strategy    TEXT,
    threshold   REAL,
    norm_before REAL,
    norm_after  REAL,
    coef        REAL,
    clipped     INTEGER NOT NULL,
    n_clipped   INTEGER,
    n_tensors   INTEGER,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonfinite (
    run_id   INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    has_nan  INTEGER NOT NULL,
    has_inf  INTEGER NOT NULL,
    PRIMARY KEY (run_id, step, layer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL,
    name   TEXT NOT NULL,
    step   INTEGER NOT NULL,
    value  REAL,
    time   REAL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_by_step ON metrics (run_id, step);
"""

TABLES = (
    "meta",
    "runs",
    "layers",
    "steps",
    "grad_norms",
    "grad_stats",
    "grad_norm_blocks",
    "clip_events",
    "nonfinite",
    "metrics",
)


def ensure_columns(conn: sqlite3.Connection, columns: dict[str, str]) -> None:
    """Add those of ``columns`` (name -> type) that ``runs`` lacks: a file that predates them. The caller
    holds a write lock."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")


def user_tables(conn: sqlite3.Connection) -> list[str]:
    """Names of the tables in the file, SQLite's own excluded."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table and the meta rows. The caller holds a write transaction (BEGIN IMMEDIATE).

    Plain DDL rather than sqlite-utils' Table.create: that has no WITHOUT ROWID option, and this text is
    the contract that docs/schema.md documents (a test compares the two column by column).
    """
    for statement in DDL.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [
            ("application", APPLICATION),
            ("schema_version", str(SCHEMA_VERSION)),
            ("block_sizes", ",".join(map(str, BLOCK_SIZES))),
        ],
    )


def check_schema(conn: sqlite3.Connection, path: str) -> bool:
    """True when the file is a gradwatch database of this schema version, False when it has no tables yet.

    Raises ForeignDatabase, SchemaTooNew or SchemaTooOld otherwise; reads only.
    """
    tables = user_tables(conn)
    if not tables:
        return False
    meta = {}
    if "meta" in tables:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:  # a foreign "meta" table with other columns
            meta = {}
    if meta.get("application") != APPLICATION:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise ForeignDatabase(
            f"{path} is an SQLite database of another application (tables: {shown}; no gradwatch meta row). "
            "gradwatch will not write into it: pass a new file name (e.g. gradwatch.db) instead."
        )
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise ForeignDatabase(
            f"{path} has a gradwatch meta table with an unreadable schema_version "
            f"{meta.get('schema_version')!r}; it was not written by gradwatch. Use a new file."
        ) from None
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, but this gradwatch reads version {SCHEMA_VERSION}. "
            "Upgrade gradwatch (pip install -U gradwatch) to open it, or record into a new file."
        )
    if version < SCHEMA_VERSION:
        raise SchemaTooOld(
            f"{path} has schema version {version}; this gradwatch reads version {SCHEMA_VERSION} and has no "
            "migration for it. Open it with the gradwatch release that wrote it, or record into a new file."
        )
    return True
