"""Dashboard fixtures: real SQLite files written through the real store writer, and an AppTest factory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make dashboard_helpers importable

from dashboard_helpers import APP, Recorded, write_run  # noqa: E402

from tracker.store import Store  # noqa: E402


@pytest.fixture
def recorded(tmp_path) -> Recorded:
    """Two finished runs: ``base`` (clip none) and its relaunch ``child`` (norm:0.5, another lr)."""
    rec = Recorded(path=tmp_path / "gradwatch.db")
    with Store.open(rec.path, create=True) as store:
        write_run(store, rec, "base", clip="none", threshold=None, seed=0, lr=0.001)
        write_run(store, rec, "child", clip="norm:0.5", threshold=0.5, seed=1, lr=0.002, parent="base")
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
