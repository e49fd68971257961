"""Replace one generated section of a Markdown page (docs/benchmarks.md) between its two markers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["markers", "replace_section"]


def markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit section ``name``."""
    return f"<!-- section:{name}:start -->", f"<!-- section:{name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between the markers of section ``name`` in ``path``; the rest of the page is kept."""
    start, end = markers(name)
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {name!r} section: expected the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body.rstrip(chr(10))}\n{end}{tail}")
