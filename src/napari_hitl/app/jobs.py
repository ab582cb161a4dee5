"""Running a job written as a generator: it yields progress and returns its result.

Jobs that are generators (predicting, training) are stopped between steps by closing them,
which is how a cancel or a pause for a click reaches them; the dock's queue and the command
line drive them with :func:`drive`.
"""

from __future__ import annotations

from typing import Callable, Generator


def drive(steps: Generator, should_stop: Callable[[], bool] | None = None,
          progress: Callable[..., None] | None = None):
    """Run ``steps`` to its end and return what it returns; ``progress(*item)`` for each item it
    yields. ``should_stop()`` is asked before every step: when true the job is closed (its
    ``finally`` clauses run) and None is returned."""
    try:
        while True:
            if should_stop is not None and should_stop():
                steps.close()
                return None
            item = next(steps)
            if progress is not None and item is not None:
                progress(*item)
    except StopIteration as done:
        return done.value
