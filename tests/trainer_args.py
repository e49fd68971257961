"""The trainer's command line for the end-to-end tests: a tiny built-in corpus, a small batch, quiet."""

__all__ = ["tiny"]


def tiny(corpus_cache, db, *extra, quiet: bool = True) -> list[str]:
    """Arguments for a few-second run on the tiny built-in corpus cached in ``corpus_cache``."""
    return ["--corpus-size", "tiny", "--cache-dir", str(corpus_cache), "--db", str(db), "--batch-size", "8",
            *(("--quiet",) if quiet else ()), *extra]  # fmt: skip
