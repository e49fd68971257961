"""gradwatch's tracker: measure, clip and record gradients into SQLite.

``from tracker import GradTracker``. The names below are imported lazily so that ``import tracker.store``
(the dashboard's only dependency) does not pay for importing torch.
"""

from importlib import import_module, metadata
from typing import Any

__all__ = [
    "__version__",
    "GradTracker",
    "NonFiniteGradientError",
    "NullTracker",
    "StepStats",
    "grad_norms",
    "parse_clip",
]

_HOME = {
    "GradTracker": "tracker.tracker",
    "NonFiniteGradientError": "tracker.tracker",
    "NullTracker": "tracker.tracker",
    "StepStats": "tracker.tracker",
    "grad_norms": "tracker.norms",
    "parse_clip": "tracker.clipping",
}


try:  # the installed distribution's (pyproject.toml), the one version of gradwatch
    __version__ = metadata.version("gradwatch")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'tracker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
