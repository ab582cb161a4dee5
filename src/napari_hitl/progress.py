"""Progress on the command line: a bar redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import sys
from typing import TextIO


def text_progress(done: int, total: int, label: str = "", stream: TextIO | None = None) -> None:
    """Show ``done`` of ``total``: a one-line bar on a terminal; elsewhere (a log, CI) one plain
    line per tenth of the work, so logs get no carriage returns."""
    stream = stream if stream is not None else sys.stderr
    total = max(int(total), 1)
    if getattr(stream, "isatty", lambda: False)():
        width = 30
        filled = int(width * done / total)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=stream, flush=True)
    elif done >= total or done * 10 // total != (done - 1) * 10 // total:
        print(f"{label} {done}/{total} ({100 * done // total}%)" if label else f"{done}/{total} ({100 * done // total}%)",
              file=stream, flush=True)
