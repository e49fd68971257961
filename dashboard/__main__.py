"""``python -m dashboard [--db PATH] [streamlit options]``, also installed as ``gradwatch-dashboard``.

``streamlit run dashboard`` names the folder relative to a checkout; an installed package has no such
folder at hand, so this starts Streamlit on the package's own folder, wherever it is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]


def command(argv: list[str]) -> list[str]:
    """The ``streamlit run`` command line for these arguments (options other than --db go to Streamlit)."""
    parser = argparse.ArgumentParser(
        prog="gradwatch-dashboard",
        description="Start the gradwatch dashboard (Streamlit) on a database. Options other than --db "
        "are passed to `streamlit run`, e.g. --server.port 8502.",
    )
    parser.add_argument("--db", help="the database to open (default: $GRADWATCH_DB, else ./gradwatch.db)")
    args, streamlit_options = parser.parse_known_args(argv)
    stray = [a for a in streamlit_options if not a.startswith("-")]
    if stray and not any(o.startswith("--") and "=" not in o for o in streamlit_options):
        # `gradwatch-dashboard runs.db`: Streamlit would take the path for an option's value or refuse it
        # in the page only. (Options with a separate value, `--server.port 8502`, are Streamlit's to check.)
        parser.error(f"unexpected argument {stray[0]!r}: give the database with --db {stray[0]}")
    if args.db is not None and not args.db.strip():
        parser.error(
            "--db '': give the database file (or leave --db out for $GRADWATCH_DB or ./gradwatch.db)"
        )
    folder = Path(__file__).resolve().parent
    # -P: the folder it is started in is not put first on sys.path (a tracker.py there would be imported).
    cmd = [sys.executable, "-P", "-m", "streamlit", "run", str(folder), *streamlit_options]
    return cmd + (["--", "--db", args.db] if args.db else [])


def main(argv: list[str] | None = None) -> None:
    cmd = command(list(sys.argv[1:] if argv is None else argv))
    os.execv(cmd[0], cmd)  # Streamlit takes over this process: Ctrl-C and exit codes are its own


if __name__ == "__main__":
    main()
