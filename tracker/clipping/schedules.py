"""Thresholds that change with the optimizer step: pure functions of the 0-based step, evaluated on the host.

A schedule is a Python float per step, so using one costs no device work and no host sync.

    constant(a)              a
    linear(a, b, steps)      a + (b - a) * min(t, steps) / steps               then b
    cosine(a, b, steps)      b + (a - b) * (1 + cos(pi * min(t, steps) / steps)) / 2   then b
    step(a, factor, every)   a * factor ** floor(t / every)
    warmup(a, steps)         a * min(1, (t + 1) / steps)      (never 0: step 0 already has a / steps)

Thresholds written in a schedule are between FLOAT32_TINY (the smallest normal float32) and FLOAT32_MAX; a
schedule that grows past the top stays there (a threshold that never clips) instead of overflowing, and one
that decays past the bottom stays there instead of reaching 0, which would wipe the gradients.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .base import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    ClipSpecError,
    fmt_num,
    parse_number,
    require_above_float32_tiny,
    require_below_float32_max,
)

__all__ = ["SCHEDULE_FORMS", "Schedule", "parse_schedule"]

SCHEDULE_FORMS = "linear(a,b,steps), cosine(a,b,steps), step(a,factor,every), warmup(a,steps)"

_ARITY = {"linear": 3, "cosine": 3, "step": 3, "warmup": 2}
_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Schedule:
    """A threshold schedule. ``kind`` is ``constant``, ``linear``, ``cosine``, ``step`` or ``warmup``."""

    kind: str
    args: tuple[float, ...]

    def __post_init__(self) -> None:
        _validate(self.kind, self.args)
        # A threshold that rounds to float32's largest value (3.4028235e+38, as the store prints it) is that
        # value: the spec and the equality of two schedules then do not depend on how it was written.
        thresholds = [
            min(x, FLOAT32_MAX) if not (_is_count(self.kind, i) or (self.kind == "step" and i == 1)) else x
            for i, x in enumerate(self.args)
        ]
        object.__setattr__(self, "args", tuple(thresholds))

    def at(self, step: int) -> float:
        """The threshold at 0-based optimizer step ``step``, within [FLOAT32_TINY, FLOAT32_MAX] (it becomes a
        float32 tensor; only a ``step`` schedule or a ``warmup`` from a tiny threshold reaches an end)."""
        return min(max(self._formula(step), FLOAT32_TINY), FLOAT32_MAX)

    def _formula(self, step: int) -> float:
        a = self.args[0]
        if self.kind == "constant":
            return a
        if self.kind == "linear":
            b, n = self.args[1], self.args[2]
            return a + (b - a) * min(step, n) / n
        if self.kind == "cosine":
            b, n = self.args[1], self.args[2]
            return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * min(step, n) / n))
        if self.kind == "step":
            factor, every = self.args[1], self.args[2]
            try:
                return a * factor ** (step // every)
            except OverflowError:  # float ** int raises where float * float would give inf
                return math.inf
        return a * min(1.0, (step + 1) / self.args[1])  # warmup

    @property
    def spec(self) -> str:
        if self.kind == "constant":
            return fmt_num(self.args[0])
        # Step counts are integers; print them without ".0" so the spec reads as written.
        parts = [
            fmt_num(x) if i == 0 or not _is_count(self.kind, i) else str(int(x))
            for i, x in enumerate(self.args)
        ]
        return f"{self.kind}({','.join(parts)})"


def _is_count(kind: str, i: int) -> bool:
    return (
        (kind in ("linear", "cosine") and i == 2)
        or (kind == "step" and i == 2)
        or (kind == "warmup" and i == 1)
    )


def _validate(kind: str, args: tuple[float, ...]) -> None:
    if kind == "constant":
        if len(args) != 1 or not (math.isfinite(args[0]) and args[0] > 0):
            raise ClipSpecError(f"threshold must be a finite number > 0, got {args[0] if args else None!r}")
        require_below_float32_max(require_above_float32_tiny(args[0], "threshold"), "threshold")
        return
    if kind not in _ARITY:
        raise ClipSpecError(f"unknown schedule {kind!r}; accepted: {SCHEDULE_FORMS}")
    if len(args) != _ARITY[kind]:
        raise ClipSpecError(
            f"schedule {kind}() takes {_ARITY[kind]} arguments, got {len(args)}; accepted: {SCHEDULE_FORMS}"
        )
    for i, x in enumerate(args):
        if _is_count(kind, i):
            if not (float(x).is_integer() and x >= 1):
                raise ClipSpecError(f"{kind}(): step count must be an integer >= 1, got {fmt_num(x)}")
        elif not (math.isfinite(x) and x > 0):
            what = "factor" if (kind == "step" and i == 1) else "threshold"
            raise ClipSpecError(f"{kind}(): {what} must be a finite number > 0, got {fmt_num(x)}")
        elif not (kind == "step" and i == 1):  # a factor may be large: the growth is capped in at()
            require_below_float32_max(
                require_above_float32_tiny(x, f"{kind}(): threshold"), f"{kind}(): threshold"
            )


def parse_schedule(text: str) -> Schedule:
    """``"1.0"`` or ``"linear(1.0,0.1,1000)"``... -> Schedule; raises ClipSpecError naming the bad part."""
    text = text.strip()
    m = _CALL.match(text)
    if m is None:
        return Schedule("constant", (parse_number(text, "threshold"),))
    kind = m.group(1).lower()
    if kind not in _ARITY:
        raise ClipSpecError(f"unknown schedule {m.group(1)!r}; accepted: {SCHEDULE_FORMS}")
    return Schedule(kind, tuple(parse_number(a, f"{kind}() argument") for a in m.group(2).split(",")))
