"""The Launch page's clip form: strategy choices with their parameters, turned into a spec string.

Builds text; validation is the tracker's (``tracker.clipping``: its parser, and ``bind_names`` against the
run's recorded parameter names, as the tracker checks a model), so the form, the CLI and ``GRADWATCH_CLIP``
accept and reject exactly the same specs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tracker.clipping import ClipSpecError, parse_clip, validate_clip
from tracker.clipping.base import parse_number

__all__ = [
    "STRATEGIES",
    "RecordedModel",
    "build_spec",
    "check_clip",
    "form_values",
    "number_text",
    "read_number",
]

# name -> what it does, and its parameters: {param: (label, default)}; a str default means a text field.
STRATEGIES: dict[str, dict] = {
    "none": {"about": "monitor only", "params": {}},
    "norm": {"about": "global L2 norm <= C (clip_grad_norm_)", "params": {"c": ("threshold C", 1.0)}},
    "value": {"about": "clamp each element to [-C, C]", "params": {"c": ("threshold C", 0.5)}},
    "layer": {"about": "each tensor's norm <= C", "params": {"c": ("threshold C", 1.0)}},
    "agc": {
        "about": "adaptive unit-wise clipping (Brock et al. 2021)",
        "params": {"l": ("clipping factor λ", 0.01), "exclude": ("exclude modules (comma-separated)", "")},
    },
    "autoclip": {
        "about": "threshold = P-th percentile of past norms (Seetharaman et al. 2020)",
        "params": {"p": ("percentile P (0-100)", 10.0), "window": ("history window (0: all)", 0.0)},
    },
    "zclip": {
        "about": "clip z-score spikes of the global norm (ZClip, 2025)",
        "params": {
            "z": ("z threshold", 2.5),
            "alpha": ("EMA alpha", 0.97),
            "warmup": ("warm-up steps", 25.0),
        },
    },
    "random": {
        "about": "threshold ~ U[lo, hi] each step (ablation control, not a method)",
        "params": {"lo": ("lo", 0.5), "hi": ("hi", 2.0)},
    },
}


def number_text(x) -> str:
    """Shortest text that parses back to the same float; integers without a trailing ``.0``."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


_num = number_text


def read_number(label: str, text: str) -> tuple[float | None, str | None]:
    """``(value, None)`` for a number field's text, else ``(None, why)``: not a number, or out of range
    (``1e400`` is infinity as a float, which no spec can hold; NaN neither). The form's number fields are
    text for this reason: a browser's number field turns 1e400 into 0, which would then be refused as
    "got 0.0", naming a value nobody typed.

    A number is what the spec grammar reads (``parse_number``): float() alone would also take ``1_000`` and
    non-ASCII digits (``١٢``), which the same value typed in a raw spec is refused for."""
    text = str(text).strip()
    if not text:
        return None, f"{label}: enter a number"
    if not _finite(text):  # 1e400, and nan or inf spelled out
        return None, f"{label}: {text!r} is out of range (not a finite number); enter a finite value"
    try:
        value = parse_number(text, label)
    except ClipSpecError:
        return None, f"{label}: {text!r} is not a number"
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):  # 1e-400: no float is that small
        return None, f"{label}: {text!r} is out of range (too small: it rounds to 0); enter a larger value"
    return value, None


def _finite(text: str) -> bool:
    """False for text float() reads as infinite or NaN; True for anything else (the grammar judges it)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return True


@dataclass(frozen=True)
class RecordedModel:
    """What the tracker checks a clip spec against, as a run recorded it: the parameter names (its layers),
    tied aliases (alias -> recorded name, the tracker's note ``tied``) and the trainable layers' dtypes;
    ``run`` names the run in a message (``disc (#2)``)."""

    names: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    run: str = ""


def check_clip(
    spec: str, model: RecordedModel | Sequence[RecordedModel] | None = None
) -> tuple[str | None, str | None]:
    """``(canonical spec, None)`` when the tracker accepts ``spec`` for the ``model`` a run recorded, else
    ``(None, the tracker's message)``. With no model (or a run that recorded no layer) only the spec itself
    is checked. Several models (the runs of a process that recorded several, a GAN's generator and
    discriminator, relaunched together with one spec): the spec must fit each; the message names the run
    it does not fit.

    The model is checked the way the tracker checks the one it is given (``Strategy.bind_names`` and
    ``bind_dtypes``): an AGC ``exclude=`` matching no parameter, or value clipping of complex parameters,
    is refused here, not by the job after it has started."""
    error = validate_clip(spec)
    if error:
        return None, error
    models = [model] if isinstance(model, RecordedModel) else list(model or ())
    canonical = parse_clip(spec).spec
    for recorded in models:
        if not recorded.names:
            continue
        strategy = parse_clip(spec)  # a strategy binds to one model
        try:
            strategy.bind_names(list(recorded.names), dict(recorded.aliases))
            strategy.bind_dtypes(dict(recorded.dtypes))
        except ClipSpecError as exc:
            where = f" for run {recorded.run}" if len(models) > 1 and recorded.run else ""
            return None, f"clip {canonical!r}{where}: {exc}"
    return canonical, None


def build_spec(strategy: str, params: dict, *, noise_eta=None, noise_gamma=None) -> str:
    """A clip spec string from the form's values (e.g. ``norm:1.0+noise(0.01,0.55)``).

    Raises ValueError for a strategy the form does not offer; parameter values are not judged here.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")
    p = params
    if strategy == "none":
        spec = "none"
    elif strategy in ("norm", "value", "layer"):
        spec = f"{strategy}:{_num(p['c'])}"
    elif strategy == "agc":
        excludes = [e.strip() for e in str(p.get("exclude", "")).split(",") if e.strip()]
        spec = f"agc:{_num(p['l'])}" + "".join(f",exclude={e}" for e in excludes)
    elif strategy == "autoclip":
        window = p.get("window") or 0
        spec = f"autoclip:{_num(p['p'])}" + (f",window={_num(window)}" if window else "")
    elif strategy == "zclip":
        spec = f"zclip:{_num(p['z'])},alpha={_num(p['alpha'])},warmup={_num(p['warmup'])}"
    else:
        spec = f"random:{_num(p['lo'])}-{_num(p['hi'])}"
    if noise_eta is not None:
        spec += (
            f"+noise({_num(noise_eta)}" + (f",{_num(noise_gamma)}" if noise_gamma is not None else "") + ")"
        )
    return spec


_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_FORMS = {
    "none": re.compile(r"none"),
    "norm": re.compile(rf"norm:(?P<c>{_NUMBER})"),
    "value": re.compile(rf"value:(?P<c>{_NUMBER})"),
    "layer": re.compile(rf"layer:(?P<c>{_NUMBER})"),
    "agc": re.compile(rf"agc:(?P<l>{_NUMBER})(?P<exclude>(?:,exclude=[^,+]+)*)"),
    "autoclip": re.compile(rf"autoclip:(?P<p>{_NUMBER})(?:,window=(?P<window>[0-9]+))?"),
    "zclip": re.compile(rf"zclip:(?P<z>{_NUMBER}),alpha=(?P<alpha>{_NUMBER}),warmup=(?P<warmup>[0-9]+)"),
    "random": re.compile(rf"random:(?P<lo>{_NUMBER})-(?P<hi>{_NUMBER})"),
}
_NOISE = re.compile(rf"\+noise\((?P<eta>{_NUMBER}),(?P<gamma>{_NUMBER})\)$")


def form_values(canonical: str) -> dict | None:
    """The form fields that rebuild a canonical spec (``parse_clip(s).spec``), or None when the form cannot
    express it (schedules, ``@p=``, seeds): the page then offers the raw spec instead.

    Returns ``{"strategy", "params", "noise_eta", "noise_gamma"}``.
    """
    spec, eta, gamma = canonical.strip(), None, None
    noise = _NOISE.search(spec)
    if noise:
        eta, gamma = float(noise["eta"]), float(noise["gamma"])
        spec = spec[: noise.start()]
    for strategy, pattern in _FORMS.items():
        m = pattern.fullmatch(spec)
        if m is None:
            continue
        params = {}
        for name, (_, default) in STRATEGIES[strategy]["params"].items():
            raw = m.groupdict().get(name)
            if name == "exclude":
                params[name] = ",".join(e for e in (raw or "").split(",exclude=") if e)
            else:
                params[name] = default if raw is None else float(raw)
        return {"strategy": strategy, "params": params, "noise_eta": eta, "noise_gamma": gamma}
    return None
