"""Form memory: the Launch form's values kept while its widgets are not drawn (on another page, under
another strategy, in the other clip mode), and the one-shot requests other pages leave for the form (the
Runs page's Relaunch, the Run page's suggested threshold).
"""

import pandas as pd
import streamlit as st

__all__ = [
    "PREFILLED_FOR",
    "clear_clip_form",
    "consume_prefill",
    "forget_unless",
    "kept_widget",
    "set_kept",
]

# {widget key: its last value}; not a widget's key, so Streamlit keeps it (see kept_widget)
KEPT = "launch_kept"
CLIP_KEYS = "clip_"  # the clip form's widget keys start with this
PREFILLED_FOR = "launch_prefilled_for"  # the source run the clip form was last filled from


def kept_widget(make, label: str, key: str, default=None, **kwargs):
    """Draw a form widget that keeps its value when it is not drawn for a while.

    Streamlit drops a widget's value from the session while the widget is not drawn (on another page: the
    sidebar, the browser's Back; under another strategy; in the other clip mode), or keeps an older value
    set before it was drawn. So the value is kept in ``KEPT`` (no widget's key), updated by the widget's
    change callback, which runs before the rerun, and given back to the widget on every run: the source run
    and a typed spec survive (otherwise the source fell back to the newest run, and a click relaunched the
    wrong one)."""
    kept = st.session_state.setdefault(KEPT, {})
    if key in kept:
        st.session_state[key] = kept[key]
    elif key not in st.session_state and default is not None:
        st.session_state[key] = default
    value = make(label, key=key, on_change=_keep, args=(key,), **kwargs)
    kept[key] = value
    return value


def _keep(key: str) -> None:
    st.session_state.setdefault(KEPT, {})[key] = st.session_state[key]


def set_kept(key: str, value) -> None:
    """Set a form widget's value (before it is drawn), kept as :func:`kept_widget` keeps it."""
    st.session_state[key] = value
    st.session_state.setdefault(KEPT, {})[key] = value


def clear_clip_form() -> None:
    """Forget every value of the clip form, drawn or kept."""
    kept = st.session_state.setdefault(KEPT, {})
    for key in [k for k in list(st.session_state) if str(k).startswith(CLIP_KEYS)]:
        del st.session_state[key]
    for key in [k for k in kept if k.startswith(CLIP_KEYS)]:
        del kept[key]


def consume_prefill(runs: pd.DataFrame) -> None:
    """Apply one-shot requests from other pages (Relaunch button, suggested threshold)."""
    source = st.session_state.pop("launch_from", None)
    if source is not None and source in set(runs["id"]):
        set_kept("launch_source", int(source))
    clip = st.session_state.pop("launch_clip", None)
    if clip is not None:
        clear_clip_form()
        st.session_state[PREFILLED_FOR] = st.session_state.get("launch_source")
        set_kept("clip_mode", "Raw spec")
        set_kept("clip_raw", clip)


def forget_unless(key: str, allowed) -> None:
    """Forget ``key``'s kept value (and the widget's) unless it is one of ``allowed``."""
    kept = st.session_state.setdefault(KEPT, {})
    if kept.get(key) not in allowed:
        kept.pop(key, None)
        st.session_state.pop(key, None)
