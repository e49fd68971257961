"""Recorded text (run names, paths, error messages) put into Streamlit markdown, shown as typed.

``st.title``, ``st.markdown``, ``st.caption``, alerts and expander labels all render Markdown, LaTeX between
``$`` and Streamlit's ``:color[...]``/``:material/...:`` directives: a run named ``**x** $y$`` would be drawn
bold with a formula. Every recorded string goes through :func:`escape_markdown` or :func:`code_span` first.
A run name that becomes part of a file name (a job's log, a replayed config) goes through
:func:`safe_file_name`.
"""

from __future__ import annotations

import re

__all__ = ["code_span", "escape_markdown", "safe_file_name"]

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


def safe_file_name(name: str) -> str:
    """``name`` as part of a file name: every character but letters, digits, ``-``, ``_`` and ``.``
    replaced by ``_``, at most 80 characters, ``run`` when nothing is left."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "run"
