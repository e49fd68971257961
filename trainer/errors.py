"""The trainer's one exception: training could not start or run; it carries the exit code the CLI returns."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(Exception):
    """Training could not start or run (bad data path, unusable device...); carries an exit code."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
