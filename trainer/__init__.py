"""gradwatch's speech trainer: ``python -m trainer`` (or ``gradwatch-train``).

The trainer is a client of ``tracker`` like any user script; nothing imports trainer internals
(the dashboard starts it as a subprocess). ``main(argv)`` is the CLI; ``build_model`` is exported
for benchmarks that want the same models.
"""

from trainer.cli import main
from trainer.models import MODEL_TASKS, MODELS, build_model

__all__ = ["MODELS", "MODEL_TASKS", "build_model", "main"]
