"""Progress on the command line: a bar redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def text_progress(done: int, total: int, label: str = "", stream: TextIO | None = None, suffix: str = "") -> None:
    """Show ``done`` of ``total``: a one-line bar on a terminal; elsewhere (a log, CI) one plain
    line per tenth of the work, so logs get no carriage returns."""
    stream = stream if stream is not None else sys.stderr
    total = max(int(total), 1)
    suffix = f" {suffix}" if suffix else ""
    if getattr(stream, "isatty", lambda: False)():
        width = 30
        filled = int(width * done / total)
        end = "\n" if done >= total else ""
        clear = "\x1b[K" if suffix else ""  # a rate line may shrink: clear what the last one left
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{suffix}{clear}", end=end,
              file=stream, flush=True)
    elif done >= total or done * 10 // total != (done - 1) * 10 // total:
        print(f"{label} {done}/{total} ({100 * done // total}%){suffix}" if label else
              f"{done}/{total} ({100 * done // total}%){suffix}", file=stream, flush=True)


def rate_progress(label: str = "", unit: str = "images", stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callable like :func:`text_progress` that also shows the rate
    and the time left, measured from its first call."""
    start: list[float] = []

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if not start:
            start.extend([now, done])
        t0, d0 = start
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else 0.0
        left = (total - done) / rate if rate else float("nan")
        eta = "" if rate == 0 else f", {int(left) // 60}:{int(left) % 60:02d} left"
        text_progress(done, total, label, stream, suffix=f"{rate:.2f} {unit}/s{eta}" if rate else "")

    return progress
