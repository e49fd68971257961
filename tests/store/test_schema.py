"""The file layout: tables and columns as docs/schema.md documents them, WAL, meta rows, versioning."""

import re
import subprocess
import sys

from tests.store.helpers import REPO, raw_sql
from tracker.store import BLOCK_SIZES, SCHEMA_VERSION, Store
from tracker.store.schema import TABLES


def documented_columns() -> dict[str, list[str]]:
    """Column names per table, parsed from the tables in docs/schema.md (the user-facing contract)."""
    text = (REPO / "docs" / "schema.md").read_text()
    out, table = {}, None
    for line in text.splitlines():
        m = re.match(r"^### `(\w+)`", line)
        if m:
            table = m.group(1)
            out[table] = []
            continue
        m = re.match(r"^\| `(\w+)` \|", line)
        if table and m:
            out[table].append(m.group(1))
    return out


def test_tables_and_columns_match_the_documentation(store, db_path):
    docs = documented_columns()
    assert sorted(docs) == sorted(TABLES)
    for table in TABLES:
        actual = [r[1] for r in raw_sql(db_path, f"PRAGMA table_info({table})")]
        assert actual == docs[table], table


def test_meta_rows_and_pragmas(store, db_path):
    meta = dict(raw_sql(db_path, "SELECT key, value FROM meta"))
    assert meta["application"] == "gradwatch"
    assert int(meta["schema_version"]) == SCHEMA_VERSION
    assert meta["block_sizes"] == ",".join(map(str, BLOCK_SIZES))
    assert raw_sql(db_path, "PRAGMA journal_mode")[0][0] == "wal"


def test_norm_tables_are_without_rowid(store, db_path):
    for table in ("grad_norms", "grad_norm_blocks", "steps", "grad_stats"):
        (sql,) = raw_sql(db_path, "SELECT sql FROM sqlite_master WHERE name = ?", (table,))[0]
        assert "WITHOUT ROWID" in sql.upper(), table


def test_reopen_keeps_runs(db_path):
    with Store.open(db_path) as s:
        run_id = s.create_run(name="first")
    with Store.open(db_path) as s:
        assert list(s.runs()["id"]) == [run_id]
    with Store.open(db_path, readonly=True) as s:
        assert s.run(run_id)["name"] == "first"


def test_processes_racing_to_create_one_file(db_path):
    # Four interpreters open the same missing file at once; BEGIN IMMEDIATE + re-check means one creates
    # the tables and the others find them. Every process then adds a run.
    code = (
        "import sys; from tracker.store import Store\n"
        "s = Store.open(sys.argv[1]); s.create_run(name=sys.argv[2]); s.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(db_path), f"p{i}"], cwd=REPO, stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()
    assert sorted(r[0] for r in raw_sql(db_path, "SELECT name FROM runs")) == ["p0", "p1", "p2", "p3"]
    assert raw_sql(db_path, "SELECT count(*) FROM meta WHERE key = 'schema_version'")[0][0] == 1


def test_documented_example_queries_run(store, db_path):
    # Every ```sql block of docs/schema.md runs against a real file with a run in it, and returns rows.
    from tests.store.helpers import make_norms, record_run

    run_id = record_run(store, make_norms(40, 3, nonfinite_every=20), name="example")
    w = store.writer(run_id)
    w.add_clip_events([dict(step=s, strategy="norm", threshold=1.0, clipped=s % 2) for s in range(40)])
    w.add_nonfinite(19, [(1, True, False)])
    w.add_metrics(39, {"val_acc": 0.9})
    w.close("finished")
    store.add_layers(run_id, [dict(id=0, name="fc1.weight", shape=[2, 3])])
    store.create_run(name="relaunch", parent_id=run_id)
    text = (REPO / "docs" / "schema.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(queries) >= 8
    for sql in queries:
        rows = raw_sql(db_path, sql)
        if "heartbeat_at <" not in sql:  # nothing is stale in a fresh file
            assert rows, sql
