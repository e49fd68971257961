"""The Launch form's inputs: the clip setting (a strategy and its parameters, or a raw spec) and the
trainer options, each checked as typed.

Clip specs are checked by the tracker's own parser and against the source run's recorded parameter names
(``dashboard.clipform``); the values typed are kept across pages by ``dashboard.formstate``.
"""

import math
from collections.abc import Sequence

import streamlit as st

from dashboard.clipform import (
    STRATEGIES,
    RecordedModel,
    build_spec,
    check_clip,
    form_values,
    number_text,
    read_number,
)
from dashboard.formstate import PREFILLED_FOR, clear_clip_form, kept_widget, set_kept
from dashboard.options import OPTIONS
from tracker.clipping import validate_clip

__all__ = ["clip_help", "clip_input", "option_inputs"]


def _prefill_clip(run: dict) -> None:
    """Start the clip form from the source run's recorded clipping, once per source run: what the user then
    types is kept (:func:`kept_widget`) until another source run is picked."""
    if st.session_state.get(PREFILLED_FOR) == run["id"]:
        return
    clear_clip_form()  # another run's typed values must not show under this one
    st.session_state[PREFILLED_FOR] = run["id"]
    recorded = run.get("clip") or "none"
    set_kept("clip_raw", recorded)
    values = form_values(recorded) if validate_clip(recorded) is None else None
    if values is None:
        set_kept("clip_mode", "Raw spec")
        return
    set_kept("clip_mode", "Strategy")
    set_kept("clip_strategy", values["strategy"])
    for name, value in values["params"].items():
        set_kept(f"clip_{values['strategy']}_{name}", value if isinstance(value, str) else number_text(value))
    set_kept("clip_noise", values["noise_eta"] is not None)
    if values["noise_eta"] is not None:
        set_kept("clip_noise_eta", number_text(values["noise_eta"]))
        set_kept("clip_noise_gamma", number_text(values["noise_gamma"]))


def _number(col, label: str, key: str, default: float, problems: list[str]) -> float | None:
    """A number field of the clip form. A text field, not ``st.number_input``: a browser turns 1e400 in a
    number field into 0, which the tracker would refuse as "got 0.0"; as text it reaches
    ``read_number`` as typed, which names it out of range."""
    value, problem = read_number(label, kept_widget(col.text_input, label, key, number_text(default)))
    if problem:
        problems.append(problem)
    return value


def clip_input(
    run: dict, models: RecordedModel | Sequence[RecordedModel] | None = None
) -> tuple[str | None, str | None]:
    """The clip spec from the form and the tracker's error message for it (None when valid). ``models``: the
    recorded parameters of the source run (and of the runs relaunched with it: its process's others),
    checked as the tracker checks a model (an AGC ``exclude=`` matching no parameter of any of them is
    refused here, not after the job has started)."""
    _prefill_clip(run)
    mode = kept_widget(st.radio, "Clipping", "clip_mode", "Strategy", options=["Strategy", "Raw spec"],
                       horizontal=True)  # fmt: skip
    problems: list[str] = []
    if mode == "Raw spec":
        spec = kept_widget(st.text_input, "Clip spec", "clip_raw", "", help=clip_help())
    else:
        strategy = kept_widget(st.selectbox, "Strategy", "clip_strategy", "norm", options=list(STRATEGIES),
                               format_func=_describe)  # fmt: skip
        params = {}
        cols = st.columns(max(1, len(STRATEGIES[strategy]["params"])))
        for col, (name, (label, default)) in zip(cols, STRATEGIES[strategy]["params"].items(), strict=False):
            key = f"clip_{strategy}_{name}"
            if isinstance(default, str):
                params[name] = kept_widget(col.text_input, label, key, default)
            else:
                # No lower bound: a negative threshold must reach the tracker's validation, explained.
                params[name] = _number(col, label, key, default, problems)
        noise = kept_widget(
            st.checkbox, "Add annealed gradient noise (Neelakantan et al. 2015)", "clip_noise", False
        )
        eta = gamma = None
        if noise:
            n1, n2 = st.columns(2)
            eta = _number(n1, "eta", "clip_noise_eta", 0.01, problems)
            gamma = _number(n2, "gamma", "clip_noise_gamma", 0.55, problems)
        if problems:
            error = "\n\n".join(problems)
            st.error(error, icon=":material/warning:")
            return None, error
        spec = build_spec(strategy, params, noise_eta=eta, noise_gamma=gamma)
    canonical, error = check_clip(spec, models)
    if error:
        st.error(error, icon=":material/warning:")
        return spec, error
    st.caption(f"Valid: `{canonical}`")
    return canonical, None


def _describe(name: str) -> str:
    return f"{name} — {STRATEGIES[name]['about']}"


def clip_help() -> str:
    from tracker.clipping import CLIP_SPEC_HELP

    return CLIP_SPEC_HELP


def option_inputs(config: dict, prefix: str) -> dict:
    """Widgets for the trainer options, prefilled from the recorded config; returns only changed values
    (``max_steps: None`` when 0 removes a recorded limit)."""
    changed = {}
    cols = st.columns(4)
    for i, (dest, (label, kind)) in enumerate(OPTIONS.items()):
        col = cols[i % 4]
        recorded = config.get(dest)
        key = f"{prefix}_{dest}"
        if isinstance(kind, tuple):
            options = list(kind)
            if recorded is not None and recorded not in options:
                options.append(recorded)
            value = col.selectbox(label, options, index=options.index(recorded) if recorded in options else 0,
                                  key=key)  # fmt: skip
        elif kind is int:
            default = int(recorded) if recorded is not None else 0
            value = col.number_input(label, value=default, step=1, key=key)
            if dest == "max_steps" and value == 0:
                value = None
        else:
            default = float(recorded) if recorded is not None else 0.0
            value = col.number_input(label, value=default, key=key, format="%g")
        if value != recorded and not (value is None and recorded is None):
            if isinstance(value, float) and recorded is not None and math.isclose(value, float(recorded)):
                continue
            changed[dest] = value
    return changed
