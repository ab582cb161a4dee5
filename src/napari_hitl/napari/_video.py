"""The time-lapse panel: annotation units to label next across frames, and Propagate.

Shown when the open image is a time-lapse. The list holds the units (40 or 80 px rectangles,
superpixels or whole frames, chosen in the panel) the video session picks (motion + diversity
first, then margin uncertainty + diversity); double-click one to jump to its frame with its
outline drawn. Propagate runs one round on the session's worker queue (fine-tune with the
temporal loss on the accepted human labels, predict every frame; it pauses while a click is
answered) and writes the predictions of unlabelled pixels as pseudo labels, never over human
ones. The panel tells the dock with signals (``status``, ``labels_saved``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_hitl.app.video import UnitRow, VideoHost
from napari_hitl.napari._progress import JobProgress

if TYPE_CHECKING:  # pragma: no cover
    from napari_hitl.app.session import Session

#: name of the shapes layer that outlines the chosen unit
OUTLINE_LAYER = "unit outline"
#: annotation units the panel offers: label shown -> unit spec of :mod:`napari_hitl.video.units`
UNIT_CHOICES = {"40 px rectangles": "rect40", "80 px rectangles": "rect80",
                "superpixels": "superpixel300", "whole frames": "frame"}


class VideoPanel(QGroupBox):
    """Units of the open time-lapse to label next, and one-round propagation to every frame;
    jobs run on ``queue``, units are outlined in ``viewer``."""

    #: a line of status for the person
    status = Signal(str)
    #: a round wrote labels of this image into the project (the shown layer should reload them)
    labels_saved = Signal(str)

    def __init__(self, viewer, queue):
        super().__init__("Time-lapse: units to label next")
        self.viewer = viewer
        self.queue = queue
        self.session: Session | None = None
        self.labels_layer = None
        self.host: VideoHost | None = None
        self.job = None
        self.rows: list[UnitRow] = []
        lay = QVBoxLayout(self)
        self.list = QListWidget()
        self.list.setToolTip("double-click a unit to jump to its frame and outline it")
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.find_button = QPushButton("Find units")
        self.find_button.setToolTip("ask the model which units (across all frames) to label next")
        self.count = QSpinBox()
        self.count.setRange(1, 100)
        self.count.setValue(8)
        self.count.setToolTip("how many units to list")
        self.unit_box = QComboBox()
        self.unit_box.addItems(list(UNIT_CHOICES))
        self.unit_box.setToolTip("what one unit to label is: a grid rectangle, a superpixel or a whole frame")
        row.addWidget(self.find_button)
        row.addWidget(self.count)
        row.addWidget(self.unit_box)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip("fine-tune on the accepted labels with the temporal loss, predict every "
                                         "frame and fill the unlabelled pixels with pseudo labels")
        row.addWidget(QLabel("Steps"))
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        self.steps.setValue(120)
        row.addWidget(self.steps)
        row.addWidget(self.propagate_button)
        lay.addLayout(row)
        self.progress = JobProgress("video propagation", "stop the round (nothing is written when it stops "
                                                         "before predicting)")
        lay.addWidget(self.progress)
        self.figures = QLabel("")
        self.figures.setWordWrap(True)
        lay.addWidget(self.figures)
        self.find_button.clicked.connect(self.find_units)
        self.propagate_button.clicked.connect(self.propagate)
        self.progress.cancel_requested.connect(self.cancel)
        self.list.itemActivated.connect(self._activated)
        self.list.itemDoubleClicked.connect(self._activated)
        self.setVisible(False)

    # ------------------------------------------------------------------ state
    def image_shown(self, session: Session | None, name: str | None, labels_layer=None) -> None:
        """The viewer shows image ``name`` of ``session`` in ``labels_layer`` (None: nothing): show
        the panel for a time-lapse (a new video session per image), hide it otherwise."""
        self.session, self.labels_layer = session, labels_layer
        project = None if session is None else session.project
        stack = project is not None and name is not None and project.record(name).is_stack
        self.setVisible(stack)
        if self.host is not None and (not stack or self.host.project is not project or self.host.name != name):
            self.cancel()
            self.host = None
            self.rows = []
            self.list.clear()
            self.figures.setText("")
        if stack and self.host is None:
            self.host = session.video(name)

    def _ready(self) -> bool:
        if self.host is None or self.session is None:
            show_error("Open a time-lapse first.")
            return False
        return True

    # ------------------------------------------------------------------ units
    def find_units(self) -> None:
        """List the units to label next (on the worker: the first call builds the session)."""
        if not self._ready():
            return
        host, k = self.host, self.count.value()
        unit = UNIT_CHOICES[self.unit_box.currentText()]

        def finished(rows):
            if rows is not None and host is self.host:
                self.show_units(rows)

        self.status.emit("Choosing units to label…")
        self.queue.submit("video-units", self.session.units_job(host, k, unit), finished,
                               channel="video-units")

    def show_units(self, rows: list[UnitRow]) -> None:
        self.rows = list(rows)
        self.list.clear()
        for r in self.rows:
            y0, x0, y1, x1 = r.bbox
            score = f" · {r.score_kind} {r.score:.2f}" if r.score > 0 else ""
            item = QListWidgetItem(f"frame {r.frame} · unit {r.index} · y {y0}-{y1}, x {x0}-{x1}{score}")
            item.setData(Qt.UserRole, r.index)
            self.list.addItem(item)
        self.status.emit(f"{len(self.rows)} units to label next")

    def _activated(self, item) -> None:
        index = item.data(Qt.UserRole)
        row = next((r for r in self.rows if r.index == index), None)
        if row is not None:
            self.go_to(row)

    def outline(self):
        """The unit outline layer (:data:`OUTLINE_LAYER`), or None."""
        layers = self.viewer.layers
        return layers[OUTLINE_LAYER] if OUTLINE_LAYER in layers else None

    def release_outline(self, keep: bool) -> None:
        """Another image is shown: the last unit's outline goes. The layer stays, emptied, for the
        next jump when ``keep`` (the next image is a time-lapse too); else it is removed, as its
        three dimensions would keep napari's frame slider over a plain image (the dock calls this
        in the batch that removes the last image's layers)."""
        layer = self.outline()
        if layer is None:
            return
        if not keep:
            self.viewer.layers.remove(layer)
        elif len(layer.data):  # (setting data costs napari ~20 ms a layer, even when empty)
            layer.data = []

    def go_to(self, row: UnitRow) -> None:
        """Jump to the unit's frame and outline it (one shapes layer, its shape replaced each time:
        a removed layer costs napari a full garbage collection on the UI thread)."""
        viewer = self.viewer
        viewer.dims.set_current_step(0, row.frame)
        y0, x0, y1, x1 = row.bbox
        t = row.frame
        rect = np.array([[t, y0, x0], [t, y0, x1 - 1], [t, y1 - 1, x1 - 1], [t, y1 - 1, x0]], float)
        layer = self.outline()
        if layer is not None and layer.ndim == 3:
            layer.data = []
            layer.add_polygons([rect], edge_color="yellow", face_color="transparent", edge_width=2)
            layer.visible = True  # a jump asks to see the unit (as the new layer made before did)
        else:
            if layer is not None:
                viewer.layers.remove(layer)
            viewer.add_shapes([rect], shape_type="polygon", edge_color="yellow", face_color="transparent",
                              edge_width=2, name=OUTLINE_LAYER)
        if self.labels_layer is not None:
            viewer.layers.selection.active = self.labels_layer

    # ------------------------------------------------------------------ propagate
    def propagate(self) -> None:
        """One round in the background: fine-tune, predict every frame, write pseudo labels."""
        if not self._ready():
            return
        if self.job is not None:
            self.status.emit("Propagation is already running.")
            return
        host, steps = self.host, self.steps.value()

        def finished(figures):
            self.running(False)
            if figures is None or host is not self.host:
                return
            self.figures.setText(figures.text())
            self.labels_saved.emit(host.name)
            self.status.emit(figures.text())
            self.find_units()

        self.running(True)
        self.status.emit("Propagating…")
        self.job = self.queue.submit("video-propagate", self.session.propagate_job(host, steps), finished,
                                     channel="video-propagate", on_progress=self.step, preemptible=True,
                                     on_error=lambda err: self.running(False))

    def cancel(self) -> None:
        """Stop the running round (nothing is written when it stops before predicting)."""
        if self.job is not None:
            self.job.cancel()
        self.running(False)

    def running(self, on: bool) -> None:
        if not on:
            self.job = None
        self.propagate_button.setEnabled(not on)
        if on:
            self.progress.start()
        else:
            self.progress.finish()

    def step(self, stage: str, done: int, total: int) -> None:
        self.progress.step(done, total, f"{stage} {done}/{total}")
