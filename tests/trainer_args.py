"""For the trainer's end-to-end tests: its command line on a tiny built-in corpus, and the comparison of
two runs' records (a resumed run against one that never stopped), read with plain sqlite3."""

import pytest
from sqlite_rows import rows

__all__ = ["RECORDED", "assert_same_records", "tiny"]

# What a run records per step, in a stable order.
RECORDED = (
    "SELECT step, loss, total_norm, total_norm_after, clipped, coef, threshold FROM steps ORDER BY step",
    "SELECT step, layer_id, norm FROM grad_norms ORDER BY step, layer_id",
    "SELECT step, layer_id, weight_norm, update_ratio, max_abs FROM grad_stats ORDER BY step, layer_id",
    "SELECT step, norm_before, norm_after, threshold, n_clipped FROM clip_events ORDER BY step",
)


def tiny(corpus_cache, db, *extra, quiet: bool = True) -> list[str]:
    """Arguments for a few-second run on the tiny built-in corpus cached in ``corpus_cache``."""
    return ["--corpus-size", "tiny", "--cache-dir", str(corpus_cache), "--db", str(db), "--batch-size", "8",
            *(("--quiet",) if quiet else ()), *extra]  # fmt: skip


def assert_same_records(want_db, got_db) -> None:
    """Every per-step row of RECORDED equal within float32 rounding; NULLs (no threshold in force during a
    ZClip warm-up, say) in the same places."""
    for sql in RECORDED:
        want, got = rows(want_db, sql), rows(got_db, sql)
        assert len(got) == len(want), sql
        for g, w in zip(got, want, strict=True):
            assert [x is None for x in g] == [x is None for x in w], sql
            g, w = [x for x in g if x is not None], [x for x in w if x is not None]
            assert g == pytest.approx(w, rel=1e-5, abs=1e-7), sql
