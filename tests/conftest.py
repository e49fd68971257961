"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""

import pytest


@pytest.fixture
def db_path(tmp_path):
    """A path for a fresh, real SQLite file (not created yet)."""
    return tmp_path / "gradwatch.db"
