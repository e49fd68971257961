"""Read a real database file the way a user would: plain sqlite3, independent of tracker.store."""

import sqlite3

__all__ = ["rows"]


def rows(db, sql, *args) -> list[tuple]:
    """All rows of one query, on a connection of its own that is closed afterwards."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
