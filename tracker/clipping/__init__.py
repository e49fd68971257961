"""Gradient clipping strategies behind one spec grammar: ``parse_clip("norm:1.0").clip_(grads, norms, N)``.

See docs/clipping.md for each strategy's formula, citation and what it records.
"""

from .adaptive import AutoClip, ZClip
from .agc import AGC, unitwise_norm
from .base import ClipResult, ClipSpecError, ClipStrategy, Strategy
from .noise import GradientNoise
from .schedules import Schedule, parse_schedule
from .spec import CLIP_SPEC_HELP, parse_clip, validate_clip
from .strategies import LayerClip, NoClip, NormClip, RandomClip, ValueClip

__all__ = [
    "AGC",
    "CLIP_SPEC_HELP",
    "AutoClip",
    "ClipResult",
    "ClipSpecError",
    "ClipStrategy",
    "GradientNoise",
    "LayerClip",
    "NoClip",
    "NormClip",
    "RandomClip",
    "Schedule",
    "Strategy",
    "ValueClip",
    "ZClip",
    "parse_clip",
    "parse_schedule",
    "unitwise_norm",
    "validate_clip",
]
