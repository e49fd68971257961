"""From a logged step's one host copy to the writer's rows: the copy's layout and the rows built from it.

``GradTracker._record`` copies a step's values to the host in one transfer and defers building its rows to
the outbox's hand-off, about once a second, where they are built in one warm loop (docs/design.md). This
module is that second half: it knows where each value sits in the copy and what the store's ``add_*``
calls take. It touches no tensors but the buffered steps' (``pending_parts``).
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

from torch import Tensor

__all__ = [
    "N_SCALARS",
    "RowBuilder",
    "pending_parts",
    "short_threshold",
    "unclipped",
    "was_clipped",
]

# Layout of the per-step scalar vector (one stack per clipped step, copied with everything else).
TOTAL, AFTER, COEF, THRESHOLD, CLIPPED, N_CLIPPED = range(6)
N_SCALARS = 6


def nonfinite_layers(norms: list[float], ids: list[int]) -> list[tuple[int, bool, bool]]:
    """(layer id, has NaN, has Inf) per non-finite norm. A tensor holding both NaN and Inf has a NaN norm,
    so it reads as has_nan only."""
    return [(ids[i], math.isnan(x), math.isinf(x)) for i, x in enumerate(norms) if not math.isfinite(x)]


def short_threshold(x: float) -> float | None:
    """A float32 threshold as the shortest decimal that is the same float32 (0.15, not 0.15000000596...), so
    that ``WHERE threshold = 0.15`` finds what ``clip="norm:0.15"`` recorded; None when there is none."""
    if not math.isfinite(x):
        return None
    exact = struct.pack("<f", x)
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        short = float(f"{x:.{digits}g}")
        try:
            if struct.pack("<f", short) == exact:
                return short
        except OverflowError:  # rounded up past float32's largest value
            continue
    return x


def unclipped(total: float) -> list[float]:
    """The scalar vector of a step that was not clipped: after = before, coef 1, no threshold."""
    return [total, total, 1.0, math.nan]


def was_clipped(scalars: list[float]) -> bool:
    return len(scalars) > CLIPPED and scalars[CLIPPED] > 0.5


def pending_parts(pending: list) -> list[Tensor]:
    """The buffered steps' device tensors in host-copy order: per step its scalars (if clipped), norms."""
    return [t for _, s, n, _, _ in pending for t in ((s, n) if s is not None else (n,))]


def step_row(step, cur, norms, ids, bad, *, loss, skipped, extra=None, at=None) -> dict[str, Any]:
    """The writer's ``add_step`` arguments for one step: ``cur`` its scalar vector, ``bad`` its non-finite
    layers as :func:`_nonfinite` lists them."""
    return dict(
        step=step,
        norms=norms,
        layer_ids=ids,
        total_norm=cur[TOTAL],
        total_norm_after=cur[AFTER],
        loss=loss,
        clipped=was_clipped(cur),
        coef=cur[COEF],
        threshold=short_threshold(cur[THRESHOLD]),
        skipped=skipped,
        nonfinite_count=len(bad),
        first_nonfinite_layer=bad[0][0] if bad else None,
        extra=extra or None,
        time=time.time() if at is None else at,
    )


class RowBuilder:
    """Builds one run's rows: its layer ids (``ids``: those of every measured parameter, ``everything``:
    the marker of a step where all of them have a gradient), its clip spec, and the extra statistics that
    hold a step's row until its optimizer step has happened (or None)."""

    def __init__(self, ids: list[int], everything: Any, clip_spec: str, extra: Any = None):
        self.ids, self.everything, self.clip_spec, self.extra = ids, everything, clip_spec, extra

    def layer_ids(self, present: Any) -> list[int]:
        return self.ids if present is self.everything else [self.ids[i] for i in present]

    def write_step(
        self, sink, step, host, has_scalars, present, has_loss, loss, extra, pending, skipped, scaled, at
    ) -> None:
        """Turn one logged step's host copy (laid out by ``GradTracker._record``) into the writer's rows."""
        pos = N_SCALARS if has_scalars else 1
        cur = host[:pos] if has_scalars else unclipped(host[0])
        n = len(present)
        norm_list, pos = host[pos : pos + n], pos + n
        loss_v = float(loss) if isinstance(loss, int | float) else None
        if has_loss:
            loss_v, pos = host[pos], pos + 1
        extra_lists = {}
        for name in extra:
            extra_lists[name], pos = host[pos : pos + n], pos + n
        self.write_pending(sink, host, pos, pending)

        ids = self.layer_ids(present)
        # One C-level sum instead of a Python test per layer: finite norms sum to a finite number.
        bad = [] if math.isfinite(sum(norm_list)) else nonfinite_layers(norm_list, ids)
        if bad:
            sink.add_nonfinite(step, bad)
        if has_scalars:
            sink.add_clip_events([self.clip_event(step, cur, n)])
        # GradScaler skips the optimizer step when the unscaled gradients hold inf/NaN.
        skipped = skipped or (scaled and bool(bad))
        row = step_row(step, cur, norm_list, ids, bad, loss=loss_v, skipped=skipped, extra=extra_lists, at=at)
        if self.extra is not None and self.extra.holds_rows:
            self.extra.hold(row, present)  # written once the optimizer step has happened
        else:
            sink.add_step(**row)

    def clip_event(self, step: int, s: list[float], n_tensors: int) -> dict[str, Any]:
        return dict(
            step=step,
            strategy=self.clip_spec,
            threshold=short_threshold(s[THRESHOLD]),
            norm_before=s[TOTAL],
            norm_after=s[AFTER],
            coef=s[COEF],
            clipped=was_clipped(s),
            n_clipped=int(s[N_CLIPPED]),
            n_tensors=n_tensors,
        )

    def write_pending(self, sink, host: list[float], pos: int, pending: list) -> None:
        """The buffered unlogged steps, now on the host: their clip events and non-finite layers, and a
        skipped step row for each one that a GradScaler skipped (inf/NaN under ``scaler=``)."""
        events = []
        for step, s, _norms, present, scaled in pending:
            scalars = None
            if s is not None:
                scalars = host[pos : pos + N_SCALARS]
                events.append(self.clip_event(step, scalars, len(present)))
                pos += N_SCALARS
            norms, pos = host[pos : pos + len(present)], pos + len(present)
            if math.isfinite(sum(norms)):
                continue
            ids = self.layer_ids(present)
            bad = nonfinite_layers(norms, ids)
            sink.add_nonfinite(step, bad)
            if scaled:
                cur = scalars if scalars is not None else unclipped(math.sqrt(sum(x * x for x in norms)))
                sink.add_step(**step_row(step, cur, norms, ids, bad, loss=None, skipped=True))
        if events:
            sink.add_clip_events(events)
