"""What every clipping strategy shares: the result record, the protocol, the error, and the scaling kernels.

A strategy's ``clip_`` works on device tensors only. It never calls ``.item()`` and never branches in Python
on a tensor value (``torch.where`` / ``clamp`` instead), so a step costs no host synchronisation.
"""

from __future__ import annotations

import inspect
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tracker.distributed import Shards

__all__ = [
    "ClipResult",
    "ClipSpecError",
    "ClipStrategy",
    "FLOAT32_MAX",
    "FLOAT32_TINY",
    "Strategy",
    "fmt_num",
    "global_result",
    "group_by_device",
    "parse_number",
    "real_view",
    "real_views",
    "require_above_float32_tiny",
    "require_below_float32_max",
    "require_positive",
    "require_threshold",
    "norm_dtype",
    "scalar_like",
    "scale_",
    "scale_each_",
    "some_names",
]

# The same epsilon as torch.nn.utils.clip_grad_norm_: coef = threshold / (norm + 1e-6).
NORM_EPS = 1e-6

# Thresholds become float32 tensors (scalar_like), and torch refuses a Python float above this one ("value
# cannot be converted to type float without overflow"). No finite float32 norm exceeds it, so a threshold
# of FLOAT32_MAX never clips.
FLOAT32_MAX = torch.finfo(torch.float32).max
# Numbers below this one round to FLOAT32_MAX in float32 (it is the midpoint to 2**128, which rounds up).
# The store keeps float32 values as their shortest decimal, 3.4028235e+38 for FLOAT32_MAX, a hair above it as
# a float64: a threshold read back from a run and pasted into a spec must still be accepted.
_ROUNDS_TO_FLOAT32_MAX = 2.0**128 - 2.0**103
# The smallest normal float32: a threshold stays a normal number, so clipping by it is exact (and not 0).
FLOAT32_TINY = torch.finfo(torch.float32).tiny


class ClipSpecError(ValueError):
    """A clip spec or a strategy option is invalid; the message names the bad value and the accepted forms."""


@dataclass(frozen=True)
class ClipResult:
    """What one ``clip_`` call did. Every field is a 0-d tensor on the gradients' device (no host sync).

    threshold: the threshold in force this step (NaN when there is none: ``none``, ZClip warm-up).
    coef: the global scaling coefficient in [0, 1]; for per-tensor and unit-wise strategies the smallest one.
    total_norm_after: global L2 norm of the gradients after clipping (before any noise is added).
    clipped: bool, whether anything was scaled down or clamped.
    n_clipped: int64, how many tensors were changed (global strategies: 0 or the number of gradients).
    """

    threshold: Tensor
    coef: Tensor
    total_norm_after: Tensor
    clipped: Tensor
    n_clipped: Tensor


@runtime_checkable
class ClipStrategy(Protocol):
    """The interface the tracker relies on. Any object with these members can be passed as ``clip=``.

    The built-in strategies also have ``noise`` (a GradientNoise or None, applied inside ``clip_``); it is
    optional for other implementations, so it is not part of the protocol. Nor is the ``shards=`` keyword of
    the built-in ``clip_``: the tracker passes it (FSDP2 only) to a ``clip_`` that accepts it; one that does
    not gets the local shards and the global norms, which is enough for a strategy that only scales.
    """

    name: str

    @property
    def spec(self) -> str: ...

    def clip_(
        self,
        grads: Sequence[Tensor],
        norms: Tensor,
        total_norm: Tensor,
        *,
        params: Sequence[Tensor] | None = None,
        step: int = 0,
        names: Sequence[str] | None = None,
    ) -> ClipResult: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def some_names(names: Sequence[str], at_most: int = 3) -> str:
    """``a, b, c and 2 more``: the first ``at_most`` names, for a message."""
    more = len(names) - at_most
    return ", ".join(names[:at_most]) + (f" and {more} more" if more > 0 else "")


def fmt_num(x: float) -> str:
    """Canonical text for a number in a spec: ``repr`` of the float round-trips (``1.0``, ``1e-05``)."""
    return repr(float(x))


def group_by_device(tensors: Sequence[Tensor]) -> list[tuple[list[Tensor], list[int]]]:
    """(tensors, their positions) per device; one group without copying when all share a device."""
    # Checking one int per tensor costs ~9 us for 150 tensors, a third of building (device, dtype) groups;
    # mixed dtypes on one device are fine for _foreach_mul_, only the coefficient's device matters.
    if len(set(map(Tensor.get_device, tensors))) <= 1:
        return [(list(tensors), list(range(len(tensors))))]
    groups: dict[torch.device, tuple[list[Tensor], list[int]]] = {}
    for i, t in enumerate(tensors):
        ts, idx = groups.setdefault(t.device, ([], []))
        ts.append(t)
        idx.append(i)
    return list(groups.values())


def real_view(t: Tensor) -> Tensor:
    """A complex tensor's real view (``view_as_real``: no copy), to scale it in place by a real number.

    A lazily conjugated one (``t.is_conj()``: what backward through ``p.conj()`` leaves in ``p.grad``) is
    viewed through ``t.conj()``, its storage as it is: scaling that by a real c scales t (conj(c z) = c
    conj(z)), and view_as_real refuses an unresolved conjugate."""
    return torch.view_as_real(t.conj() if t.is_conj() else t)


def real_views(tensors: list[Tensor]) -> list[Tensor]:
    """``tensors`` with each complex one as its real view (``real_view``), for scaling by a real
    coefficient. A complex tensor times a real one is computed as complex arithmetic, where
    (inf + 0j) * (1 + 0j) is inf + nanj: a gradient left "untouched" (coef 1) would gain a NaN."""
    if not any(map(Tensor.is_complex, tensors)):  # (~14 us for 150 tensors, only where a strategy scales)
        return tensors
    return [real_view(t) if t.is_complex() else t for t in tensors]


def scale_(grads: Sequence[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-d tensor ``coef`` (fused per device, like torch)."""
    if not grads:
        return
    for tensors, _ in group_by_device(grads):
        # There is no public fused in-place multiply; torch.nn.utils.clip_grads_with_norm_ uses this one.
        torch._foreach_mul_(real_views(tensors), coef.to(tensors[0].device))


def scale_each_(grads: Sequence[Tensor], coefs: Tensor) -> None:
    """Multiply gradient i in place by ``coefs[i]`` (1-D tensor), fused per device."""
    if not grads:
        return
    for tensors, idx in group_by_device(grads):
        local = coefs.to(tensors[0].device).unbind(0)
        torch._foreach_mul_(real_views(tensors), [local[i] for i in idx])


def scalar_like(value: float, like: Tensor) -> Tensor:
    # torch.full launches a fill kernel with the value as an argument: no host-to-device copy to wait for.
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.full((), value, dtype=dtype, device=like.device)


def norm_dtype(norm: Tensor) -> Tensor:
    """A norm in the precision decisions are taken in: float64 norms (of float64 gradients) stay float64, as
    ``clip_grad_norm_`` computes their coefficient in float64; any other is read as float32."""
    return norm if norm.dtype == torch.float64 else norm.to(torch.float32)


class Strategy:
    """Base class of the built-in strategies: noise after clipping, equality by spec, empty state by default.

    Subclasses set ``name``, implement ``_clip`` and ``_base_spec``; stateful ones override the state methods.
    """

    name = ""
    _clip_takes_shards = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A user's subclass may implement _clip without ``shards`` (docs/clipping.md): it is then called
        # without it. Read once here, not at every step.
        try:
            taken = inspect.signature(cls._clip).parameters.values()
        except (TypeError, ValueError):  # (no signature to read)
            taken = ()
        cls._clip_takes_shards = any(p.name == "shards" or p.kind is p.VAR_KEYWORD for p in taken)

    def __init__(self) -> None:
        self.noise = None  # a tracker.clipping.noise.GradientNoise, attached by the parser or by hand

    @property
    def spec(self) -> str:
        """Canonical spec string; ``parse_clip(s.spec) == s``."""
        return self._base_spec() + (f"+{self.noise.spec}" if self.noise is not None else "")

    def _base_spec(self) -> str:
        raise NotImplementedError

    def _clip(self, grads, norms, total_norm, *, params, step, names, shards) -> ClipResult:
        raise NotImplementedError

    def bind_names(self, names: Sequence[str], aliases: Mapping[str, str]) -> None:
        """Told by the tracker, once, the model's parameter names (``named_parameters()``, each tensor once)
        and ``aliases`` (a tied tensor's other names -> the name it is recorded under), so that a strategy
        taking names can refuse one matching no parameter. Raises ClipSpecError; the default accepts all."""

    def bind_dtypes(self, dtypes: Mapping[str, str]) -> None:
        """Told by the tracker, with the names, each parameter's dtype (name -> ``"float32"``, as in
        ``layers.dtype``), so that a strategy that cannot clip a dtype refuses it before training starts
        rather than fail inside ``tracker.step()``. Raises ClipSpecError; the default accepts all."""

    @torch.no_grad()
    def clip_(
        self,
        grads: Sequence[Tensor],
        norms: Tensor,
        total_norm: Tensor,
        *,
        params: Sequence[Tensor] | None = None,
        step: int = 0,
        names: Sequence[str] | None = None,
        shards: Shards | None = None,
    ) -> ClipResult:
        """Clip ``grads`` in place, then add noise if configured. ``norms``/``total_norm`` are the pre-clip L2
        norms already measured by the tracker (measure once). ``params`` and ``names`` match ``grads`` one to
        one; only ``agc`` needs them. ``step`` is the 0-based optimizer step (schedules, noise, seeding).

        ``shards``: when ``grads`` (and ``params``) are the local shards of sharded tensors (FSDP2), their
        layout (:class:`tracker.distributed.Shards`, given by the tracker), while ``norms`` are already the
        global ones. The strategies that read gradient values then reduce what they read over the shards, so
        that every rank takes the same decision and records what one process would; a collective."""
        grads = list(grads)
        given = step
        try:
            # ints and numpy integers; not floats, and not tensors (reading one would be a host sync)
            step = operator.index(step) if not isinstance(step, Tensor) else -1
        except TypeError:
            step = -1
        if step < 0:
            raise ValueError(f"step must be a non-negative integer, got {given!r}")
        if shards is not None and len(shards) != len(grads):
            raise ValueError(f"shards describes {len(shards)} tensors, grads has {len(grads)}")
        if self._clip_takes_shards:
            result = self._clip(
                grads, norms, total_norm, params=params, step=step, names=names, shards=shards
            )
        else:
            result = self._clip(grads, norms, total_norm, params=params, step=step, names=names)
        if self.noise is not None:
            self.noise.apply_(grads, step, shards)
        return result

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints needed to resume; stateless strategies return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name!r} has no state to load, got keys {sorted(state)}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strategy) and type(other) is type(self) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"parse_clip({self.spec!r})"


def global_result(
    grads: list[Tensor],
    total_norm: Tensor,
    threshold: Tensor,
    *,
    target: Tensor | None = None,
    trigger: Tensor | None = None,
) -> ClipResult:
    """Scale all gradients so the global norm becomes ``target`` (default ``threshold``) when ``trigger``
    (default: norm > threshold) holds; the shared tail of norm, schedules, random, AutoClip and ZClip.

    coef = target / (N + 1e-6) as in clip_grad_norm_. A non-finite N leaves the gradients untouched (coef 1):
    torch would multiply by 0 or NaN and turn the finite gradients into NaN as well.
    """
    total = norm_dtype(total_norm)
    target = threshold if target is None else target
    trigger = total > threshold if trigger is None else trigger
    clipped = torch.isfinite(total) & trigger
    coef = torch.where(clipped, target / (total + NORM_EPS), torch.ones_like(total))
    # Multiplying by 1 when nothing is clipped is what clip_grad_norm_ does too: no `if` on a device value.
    scale_(grads, coef)
    n = torch.where(clipped, len(grads), 0)
    return ClipResult(threshold, coef, total * coef, clipped, n.to(torch.int64))


# [0-9], not \d: \d and float() also take other scripts' digits ("١٢", fullwidth "１").
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_number(text: str, what: str) -> float:
    """Plain decimal or scientific notation with ASCII digits only: float() would also take "1_000", "nan",
    "infinity" and non-ASCII digits."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise ClipSpecError(f"{what} {text!r} is not a number")
    return float(text)


def require_positive(value: float, what: str) -> float:
    """Constructor-side check shared by the strategies: a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ClipSpecError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def require_below_float32_max(value: float, what: str) -> float:
    """A number that a float32 tensor can hold: at most FLOAT32_MAX (checked where a spec or option enters,
    so that the mistake is reported there and not as a torch overflow inside ``tracker.step()``)."""
    if FLOAT32_MAX < value < _ROUNDS_TO_FLOAT32_MAX:
        return FLOAT32_MAX
    if value > FLOAT32_MAX:
        raise ClipSpecError(
            f"{what} must be at most {fmt_num(FLOAT32_MAX)} (the largest finite float32), "
            f"got {fmt_num(value)}"
        )
    return float(value)


def require_above_float32_tiny(value: float, what: str) -> float:
    """A threshold a float32 tensor holds at full precision: at least FLOAT32_TINY. Below it a threshold is
    subnormal (or rounds to 0, or is flushed to 0 where denormals are off) and would wipe the gradients."""
    if value < FLOAT32_TINY:
        raise ClipSpecError(
            f"{what} must be at least {fmt_num(FLOAT32_TINY)} (the smallest normal float32), "
            f"got {fmt_num(value)}"
        )
    return float(value)


def require_threshold(value: float, what: str) -> float:
    """Constructor-side check of a fixed threshold: a finite number in [FLOAT32_TINY, FLOAT32_MAX]."""
    return require_below_float32_max(require_above_float32_tiny(require_positive(value, what), what), what)
