"""Recorded text (run names, paths, error messages) put into Streamlit markdown, shown as typed.

``st.title``, ``st.markdown``, ``st.caption``, alerts and expander labels all render Markdown, LaTeX between
``$`` and Streamlit's ``:color[...]``/``:material/...:`` directives: a run named ``**x** $y$`` would be drawn
bold with a formula. Every recorded string goes through :func:`escape_markdown` or :func:`code_span` first.
A run name that becomes part of a file name (a job's log, a replayed config) goes through
:func:`safe_file_name`. A path or argument as the OS gave it (which may hold bytes that are not UTF-8, which
Streamlit cannot send) goes through :func:`printable` before it is put into a message.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["code_span", "escape_markdown", "printable", "safe_file_name"]

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones Markdown, Streamlit's
# directives and LaTeX give a meaning to.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|$~:&])")


def escape_markdown(text) -> str:
    """``text`` as literal Markdown text: every special character backslash-escaped, newlines as spaces."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def code_span(text) -> str:
    """``text`` as an inline code span, whatever backticks it holds (the fence is longer than any run of
    backticks inside it, as CommonMark allows)."""
    text = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# A file name's longest part is 255 bytes on Linux and macOS (NAME_MAX); the names built from a
# run name add a time stamp, a hash, a counter and a suffix around it, which fit in the rest.
NAME_BYTES = 200


def printable(text) -> str:
    """``text`` with each byte that is not UTF-8 written as the four characters ``\\xNN``, as the store
    records such text (docs/schema.md): Python holds such a byte of a file name or argument as a surrogate
    escape, which no page can show (Streamlit refuses to send it)."""
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_file_name(name: str, max_bytes: int = NAME_BYTES) -> str:
    """``name`` as part of a file name: every character but letters, digits, ``-``, ``_`` and ``.``
    replaced by ``_``, ``run`` when nothing is left, at most ``max_bytes`` bytes in UTF-8 (a limit of file
    systems, not of characters: a Chinese character takes three). A longer name is cut at a character and
    ends with ``-`` and a hash of the whole name, so two long names that begin alike stay two names."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"
    if len(safe.encode()) <= max_bytes:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    head = safe.encode()[: max_bytes - len(digest) - 1].decode("utf-8", "ignore")  # (a cut character goes)
    return f"{head}-{digest}"
