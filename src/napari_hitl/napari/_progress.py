"""One job-progress widget (bar, cancel button, status line) for training, ranking and video.

While a job runs, its progress also shows in napari's activity dock (``napari.utils.progress``).
"""

from __future__ import annotations

from napari.utils import progress as napari_progress
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


class JobProgress(QWidget):
    """Progress of one kind of background job; ``cancel_requested`` when its Cancel is pressed."""

    cancel_requested = Signal()

    def __init__(self, title: str, cancel_tip: str = "stop the job"):
        super().__init__()
        self.title = title
        self.activity = None  # the napari.utils.progress of the running job
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(cancel_tip)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setVisible(False)
        lay.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        self.finish()

    @property
    def running(self) -> bool:
        return self.cancel_button.isEnabled()

    def start(self, text: str = "starting…") -> None:
        """A job started: the bar is busy until its first step reports."""
        self._close_activity()
        self.activity = napari_progress(total=0, desc=f"napari-hitl: {self.title}")
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)
        self.bar.setValue(0)
        self.bar.setFormat(text)

    def step(self, done: int, total: int, text: str) -> None:
        """``done`` of ``total`` (``text`` on the bar and in the activity dock)."""
        self.bar.setRange(0, max(1, total))
        self.bar.setValue(done)
        self.bar.setFormat(text)
        activity = self.activity  # napari's events may run Qt's loop, which may finish the job
        if activity is not None:
            if activity.total != total:
                activity.total = total
            if done < activity.n:  # a new stage counts from zero
                activity.n = 0
            activity.set_description(f"napari-hitl: {self.title}: {text}")
            activity.update(done - activity.n)

    def finish(self, status: str | None = None) -> None:
        """The job ended (done, failed or cancelled); ``status`` says what it did."""
        self._close_activity()
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("idle")
        if status is not None:
            self.status.setText(status)
            self.status.setVisible(bool(status))

    def _close_activity(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None
