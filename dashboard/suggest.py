"""Suggest a clipping threshold from the pre-clip global norms a run has recorded.

Two published rules, both on the finite pre-clip norms:

* AutoClip (Seetharaman et al., 2020): clip at the p-th percentile (0-100 scale) of the norm history;
  the paper recommends p = 10. As a *fixed* threshold this is aggressive (about 90% of the recorded
  steps would have been clipped); relaunching with ``autoclip:10`` applies the rule adaptively instead.
* Robust outlier rule: median + k * MAD, with MAD the median absolute deviation scaled by 1.4826 so that
  it estimates the standard deviation of normally distributed norms; k = 3 flags only spikes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAD_TO_SIGMA", "ThresholdSuggestion", "suggest_threshold"]

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): makes the MAD a consistent estimator of sigma for normal data


@dataclass(frozen=True)
class ThresholdSuggestion:
    """Thresholds derived from ``n`` finite pre-clip global norms."""

    n: int
    percentile: float  # the p used for the AutoClip rule, 0-100 scale
    autoclip: float  # p-th percentile of the norms
    k: float
    median: float
    mad: float  # scaled MAD
    robust: float  # median + k * mad
    clip_rate_autoclip: float  # fraction of recorded steps above ``autoclip`` (0-1)
    clip_rate_robust: float  # fraction of recorded steps above ``robust`` (0-1)


def suggest_threshold(norms, *, percentile: float = 10.0, k: float = 3.0) -> ThresholdSuggestion | None:
    """Return suggested thresholds, or None when no finite norm has been recorded yet."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile is on a 0-100 scale, got {percentile!r}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k!r}")
    values = np.asarray(norms, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    autoclip = float(np.percentile(values, percentile))
    median = float(np.median(values))
    mad = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    robust = median + k * mad
    return ThresholdSuggestion(
        n=int(values.size),
        percentile=float(percentile),
        autoclip=autoclip,
        k=float(k),
        median=median,
        mad=mad,
        robust=robust,
        clip_rate_autoclip=float(np.mean(values > autoclip)),
        clip_rate_robust=float(np.mean(values > robust)),
    )
