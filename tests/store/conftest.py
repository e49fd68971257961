"""Fixtures for the store tests: real SQLite files in tmp_path."""

import pytest

from tracker.store import Store


@pytest.fixture
def store(db_path):
    s = Store.open(db_path)
    yield s
    s.close()
