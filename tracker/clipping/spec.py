"""The clip spec grammar: one string, the same on the CLI, in ``GRADWATCH_CLIP`` and in the dashboard form.

    spec      := strategy [ "+" noise ]
    strategy  := "none" | "value:" T | "norm:" T [ "@p=" P ] | "layer:" T
               | "agc:" L { ",exclude=" NAME }        | "autoclip" [ ":" [P] ] [ ",window=" N ]
               | "zclip" [ ":" [Z] ] [ ",alpha=" A ] [ ",warmup=" N ] | "random:" LO "-" HI [ ",seed=" S ]
    T         := number | "linear(" a "," b "," steps ")" | "cosine(" a "," b "," steps ")"
               | "step(" a "," factor "," every ")" | "warmup(" a "," steps ")"
    noise     := "noise(" eta [ "," gamma ] [ ",seed=" S ] ")"

``parse_clip(s).spec`` is the canonical form and ``parse_clip(parse_clip(s).spec) == parse_clip(s)``.
"""

from __future__ import annotations

import re

from .adaptive import AutoClip, ZClip
from .agc import AGC
from .base import ClipSpecError, ClipStrategy, Strategy, parse_number
from .noise import GradientNoise
from .schedules import SCHEDULE_FORMS, parse_schedule
from .strategies import LayerClip, NoClip, NormClip, RandomClip, ValueClip

__all__ = ["ACCEPTED", "CLIP_SPEC_HELP", "EXAMPLES", "parse_clip", "validate_clip"]

ACCEPTED = (
    "none, value:C, norm:C[@p=P], layer:C, agc:L[,exclude=NAME], autoclip[:P][,window=N], "
    "zclip[:Z][,alpha=A][,warmup=N], random:LO-HI[,seed=S]; C may be a schedule "
    f"({SCHEDULE_FORMS}); append +noise(eta[,gamma][,seed=S]) for gradient noise"
)

# One example per strategy, used in error messages ("expected e.g. ...").
EXAMPLES = {
    "none": "none",
    "value": "value:0.5",
    "norm": "norm:1.0",
    "layer": "layer:1.0",
    "agc": "agc:0.01,exclude=fc",
    "autoclip": "autoclip:10",
    "zclip": "zclip:2.5",
    "random": "random:0.5-2.0",
}

CLIP_SPEC_HELP = """\
Gradient clipping spec (examples):
  none                       monitor only
  value:0.5                  clamp each element to [-0.5, 0.5]
  norm:1.0                   global L2 norm <= 1.0 (clip_grad_norm_); norm:1.0@p=inf for the max-norm
  layer:1.0                  each parameter tensor's norm <= 1.0
  agc:0.01,exclude=fc        adaptive unit-wise clipping (Brock et al. 2021), skipping module fc
  autoclip:10,window=1000    threshold = 10th percentile (0-100 scale) of past global norms
  zclip:2.5                  clip z-score spikes of the global norm (EMA alpha 0.97, warm-up 25)
  random:0.5-2.0             threshold ~ U[0.5, 2.0] each step (ablation control, not a method)
  norm:linear(5,1,1000)      scheduled: linear|cosine(a,b,steps), step(a,factor,every), warmup(a,steps)
  norm:1.0+noise(0.01)       add annealed Gaussian noise after clipping: var = eta/(1+t)^0.55"""

# NAME, NAME:ARGS, and NAME,OPTIONS for a strategy whose positional value has a default ("autoclip,window=N").
_HEAD = re.compile(r"^\s*([A-Za-z]+)\s*(?:(?::|(?=,))(.*))?$", re.DOTALL)
# "+" starts the noise part only when followed by a letter: "1e+3" stays a number.
_PLUS = re.compile(r"\+(?=\s*[A-Za-z])")
# [0-9], not \d: \d (and int(), float()) also take other scripts' digits ("١٢"), which the grammar does not.
_NUM = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DIGITS = re.compile(r"\+?[0-9]+")
_SEED = re.compile(r"[+-]?[0-9]+")  # (a negative one reaches the constructor's ">= 0" message)
# Signed bounds, so that "random:-1-2" is told its bound must be > 0 rather than that it is not a range.
_RANGE = re.compile(rf"\s*([+-]?{_NUM})\s*-\s*([+-]?{_NUM})\s*")
_NOISE = re.compile(r"^\s*noise\s*\((.*)\)\s*$", re.IGNORECASE)


def parse_clip(spec: object) -> ClipStrategy:
    """A strategy from a spec string (``None`` means ``none``); a strategy object is returned unchanged.

    Raises ClipSpecError (a ValueError) naming the bad part, an example and the accepted forms.
    """
    if spec is None:
        return NoClip()
    if not isinstance(spec, str):
        if isinstance(spec, ClipStrategy):
            return spec
        raise TypeError(
            f"clip must be a spec string or a clipping strategy object, got {type(spec).__name__}"
        )
    try:
        return _parse(spec)
    except ClipSpecError as e:
        example = EXAMPLES.get(_name_of(spec), "norm:1.0")
        raise ClipSpecError(
            f"invalid clip spec {spec!r}: {e}; expected e.g. {example!r} (accepted: {ACCEPTED})"
        ) from None


def validate_clip(spec: object) -> str | None:
    """The error message for a bad spec, or None when it parses (for forms that show errors inline)."""
    try:
        parse_clip(spec)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _name_of(spec: str) -> str:
    m = re.match(
        r"\s*([A-Za-z]+)", spec
    )  # (also from a malformed spec: "autoclip;5" gets autoclip's example)
    return m.group(1).lower() if m else ""


def _parse(text: str) -> Strategy:
    if not text.strip():
        raise ClipSpecError("empty spec")
    parts = _PLUS.split(text)
    if len(parts) > 2:
        raise ClipSpecError("at most one '+noise(...)' part is allowed")
    m = _HEAD.match(parts[0])
    if m is None:
        raise ClipSpecError(f"{parts[0].strip()!r} is not of the form NAME or NAME:ARGS")
    name, args = m.group(1).lower(), (m.group(2) or "").strip()
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ClipSpecError(f"unknown strategy {m.group(1)!r}")
    strategy = builder(args)
    if len(parts) == 2:
        strategy.noise = _noise(parts[1])
    return strategy


def _split_args(args: str) -> tuple[list[str], dict[str, list[str]]]:
    """Top-level comma split (commas inside a schedule's parentheses stay): positionals, then key=value."""
    items, depth, cur = [], 0, ""
    for ch in args:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ClipSpecError(f"unbalanced parentheses in {args!r}")
    items.append(cur)
    positional: list[str] = []
    options: dict[str, list[str]] = {}
    for item in (i.strip() for i in items):
        if "=" in item and "(" not in item.split("=", 1)[0]:
            key, value = (s.strip() for s in item.split("=", 1))
            options.setdefault(key.lower(), []).append(value)
        elif options:
            raise ClipSpecError(f"positional value {item!r} after an option")
        elif item or len(items) > 1:
            positional.append(item)
    return positional, options


def _check(
    name: str, positional: list[str], options: dict[str, list[str]], n_pos: int, keys: tuple[str, ...]
):
    if len(positional) > n_pos:
        raise ClipSpecError(f"{name} takes {n_pos} positional value(s), got {len(positional)}: {positional}")
    for key, values in options.items():
        if key not in keys:
            accepted = ", ".join(k + "=" for k in keys) or "none"
            raise ClipSpecError(f"unknown option {key!r} for {name} (accepted options: {accepted})")
        if len(values) > 1 and key != "exclude":
            raise ClipSpecError(f"option {key!r} given {len(values)} times")


def _int(text: str, what: str) -> int:
    """A count (window, warm-up): digits, or a number with an integral value ("1e3")."""
    if _DIGITS.fullmatch(text.strip()):
        return int(text)
    value = parse_number(text, what)
    if not value.is_integer():
        raise ClipSpecError(f"{what} {text.strip()!r} is not an integer")
    return int(value)


def _seed(text: str, what: str) -> int:
    """A seed: digits only, read exactly. A 64-bit seed is past what a float holds (2**53), so a seed written
    as a float ("9007199254740993.0") would silently become another seed."""
    text = text.strip()
    if not _SEED.fullmatch(text):
        raise ClipSpecError(f"{what} {text!r} must be a plain integer (digits only, e.g. seed=42)")
    return int(text)


def _none(args: str) -> Strategy:
    if args:
        raise ClipSpecError(f"none takes no arguments, got {args!r}")
    return NoClip()


def _threshold_builder(cls, name: str):
    def build(args: str) -> Strategy:
        norm_type = 2.0
        if name != "norm" and "@" in args:
            raise ClipSpecError(f"'@p=' (the norm type) is an option of norm only, got {args!r} for {name}")
        if name == "norm" and "@" in args:
            args, _, p = args.partition("@")
            key, eq, value = p.partition("=")
            if key.strip().lower() != "p" or not eq:
                raise ClipSpecError(f"expected '@p=P' after the threshold, got '@{p}'")
            value = value.strip().lower()
            norm_type = float("inf") if value == "inf" else parse_number(value, "norm type p")
        if not args.strip():
            raise ClipSpecError(f"{name} needs a threshold")
        positional, options = _split_args(args)
        _check(name, positional, options, 1, ())
        schedule = parse_schedule(positional[0])
        return NormClip(schedule, norm_type) if cls is NormClip else cls(schedule)

    return build


def _agc(args: str) -> Strategy:
    positional, options = _split_args(args)
    _check("agc", positional, options, 1, ("exclude",))
    if not positional or not positional[0]:
        raise ClipSpecError("agc needs a clipping factor L")
    return AGC(parse_number(positional[0], "agc clipping factor"), exclude=tuple(options.get("exclude", ())))


def _autoclip(args: str) -> Strategy:
    positional, options = _split_args(args)
    _check("autoclip", positional, options, 1, ("window",))
    p = parse_number(positional[0], "autoclip percentile") if positional and positional[0] else 10.0
    window = _int(options["window"][0], "autoclip window") if "window" in options else None
    return AutoClip(p, window)


def _zclip(args: str) -> Strategy:
    positional, options = _split_args(args)
    _check("zclip", positional, options, 1, ("alpha", "warmup"))
    z = parse_number(positional[0], "zclip threshold Z") if positional and positional[0] else 2.5
    alpha = parse_number(options["alpha"][0], "zclip alpha") if "alpha" in options else 0.97
    warmup = _int(options["warmup"][0], "zclip warmup") if "warmup" in options else 25
    return ZClip(z, alpha, warmup)


def _random(args: str) -> Strategy:
    positional, options = _split_args(args)
    _check("random", positional, options, 1, ("seed",))
    m = _RANGE.fullmatch(positional[0] if positional else "")
    if m is None:
        raise ClipSpecError(f"random needs a range LO-HI, got {args!r}")
    seed = _seed(options["seed"][0], "random seed") if "seed" in options else 0
    return RandomClip(parse_number(m.group(1), "random LO"), parse_number(m.group(2), "random HI"), seed)


def _noise(text: str) -> GradientNoise:
    m = _NOISE.match(text)
    if m is None:
        raise ClipSpecError(f"expected '+noise(eta[,gamma][,seed=S])' after '+', got {text.strip()!r}")
    positional, options = _split_args(m.group(1))
    _check("noise", positional, options, 2, ("seed",))
    if not positional or not positional[0]:
        raise ClipSpecError("noise needs eta, e.g. noise(0.01)")
    eta = parse_number(positional[0], "noise eta")
    gamma = parse_number(positional[1], "noise gamma") if len(positional) > 1 else 0.55
    seed = _seed(options["seed"][0], "noise seed") if "seed" in options else 0
    return GradientNoise(eta, gamma, seed)


_BUILDERS = {
    "none": _none,
    "value": _threshold_builder(ValueClip, "value"),
    "norm": _threshold_builder(NormClip, "norm"),
    "layer": _threshold_builder(LayerClip, "layer"),
    "agc": _agc,
    "autoclip": _autoclip,
    "zclip": _zclip,
    "random": _random,
}
