"""Waiting on real processes and threads: poll a condition until it holds or a deadline passes."""

import time

__all__ = ["wait_for"]


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, else its value once the time
    is up (checked one last time, so a condition that came true at the deadline is not reported missed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
