"""Command-line progress: a bar on a terminal, plain lines in a log."""

import io

from napari_hitl.progress import text_progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_logs_get_plain_lines_and_terminals_a_bar():
    log = io.StringIO()
    for done in range(1, 101):
        text_progress(done, 100, "export", log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10 and lines[-1] == "export 100/100 (100%)"
    tty = _Terminal()
    for done in range(1, 4):
        text_progress(done, 3, "train", tty)
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("3/3\n")
