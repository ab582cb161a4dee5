"""The objects panel: the model's objects in the open image, least certain first, one click each.

*Find objects* predicts the open image (the shown frame of a time-lapse) with the instance
head on the worker queue and lists its objects with their confidence; they are outlined in a
layer of their own (``<image> proposals``). That layer is made once, hidden and empty, when the
first image opens (beside the image's own layers), and then only its data, name and visibility
change: napari spends about 150 ms of the UI thread making a layer, longer than the 100 ms a
find may stall it. Double-click a row to centre the view on it;
*Accept ✓* saves the object whole as an accepted machine label, *Reject ✗* makes its pixels
the person's background (never over the person's labels); the dock's Labels layer shows the
saved object at once, and keeps what the person has not saved yet elsewhere. The panel tells
the dock with signals (``status``, ``failed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout

from napari_hitl.app.objects import Proposals, accept_object, propose_objects, reject_object
from napari_hitl.errors import HitlError
from napari_hitl.instances import outlines
from napari_hitl.napari._layers import empty_hidden, show_saved

if TYPE_CHECKING:  # pragma: no cover
    from napari_hitl.app.session import Session

#: suffix of the layer that outlines the proposed objects
PROPOSALS_SUFFIX = "proposals"


class ObjectsPanel(QGroupBox):
    """The model's objects of the open image, least certain first; jobs run on ``queue``."""

    #: a line of status for the person
    status = Signal(str)
    #: an error the person can fix
    failed = Signal(object)

    def __init__(self, viewer, queue):
        super().__init__("Objects the model proposes")
        self.viewer = viewer
        self.queue = queue
        self.session: Session | None = None
        self.name: str | None = None
        self.labels_layer = None  # the dock's Labels layer of the open image
        self.frame = lambda: None  # the shown frame of a time-lapse (None: a single image)
        self.proposals: Proposals | None = None
        self.layer = None
        lay = QVBoxLayout(self)
        self.find_button = QPushButton("Find objects")
        self.find_button.setToolTip("predict this image's objects and list them, least certain first")
        lay.addWidget(self.find_button)
        self.list = QListWidget()
        self.list.setToolTip("double-click: centre the view on the object")
        self.list.setMaximumHeight(100)
        lay.addWidget(self.list)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept ✓")
        self.accept_button.setToolTip("save the selected object whole (an accepted machine label)")
        self.reject_button = QPushButton("Reject ✗")
        self.reject_button.setToolTip("not an object: its pixels become background (your labels stay)")
        row.addWidget(self.accept_button)
        row.addWidget(self.reject_button)
        lay.addLayout(row)
        self.find_button.clicked.connect(self.find)
        self.accept_button.clicked.connect(lambda: self._answer(accept_object, "accepted"))
        self.reject_button.clicked.connect(lambda: self._answer(reject_object, "rejected"))
        self.list.itemDoubleClicked.connect(self._centre)

    def image_shown(self, session: Session | None, name: str | None, labels_layer=None, frame=None) -> None:
        """The viewer now shows ``name`` of ``session`` in ``labels_layer``; earlier proposals go."""
        self.session, self.name, self.labels_layer = session, name, labels_layer
        if frame is not None:
            self.frame = frame
        self.clear()
        if session is None or name is None or labels_layer is None:
            self._remove_layer()  # no image: nothing to propose on
            return
        self._ready_layer(f"{name} {PROPOSALS_SUFFIX}")

    def clear(self) -> None:
        """Forget the proposals; their layer stays, hidden and empty, for the next ones."""
        self.proposals = None
        self.list.clear()
        if self.layer is not None and self.layer in self.viewer.layers:
            empty_hidden(self.layer, np.zeros((1, 1), np.uint8))  # nothing stale if the person shows it

    def _remove_layer(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None

    def _ready_layer(self, layer_name: str, data: np.ndarray | None = None) -> None:
        """The proposals layer, named ``layer_name``, on top of the shown image's layers: made
        the first time (or if the person deleted it), else reused; the person's labels stay the
        active layer. With ``data`` it shows those outlines, else it is hidden and empty."""
        layers = self.viewer.layers
        active = layers.selection.active
        if self.layer is None or self.layer not in layers:
            self.layer = self.viewer.add_labels(np.zeros((1, 1), np.uint8), name=layer_name, opacity=0.9,
                                                visible=False)
            self.layer.editable = False
        else:
            self.layer.name = layer_name
            if layers.index(self.layer) != len(layers) - 1:
                layers.move(layers.index(self.layer), len(layers))
        if data is not None:
            self.layer.data = data
            self.layer.visible = True
        if active is not None and active is not self.layer and active in layers:
            layers.selection.active = active

    def find(self) -> None:
        if self.session is None or self.name is None:
            self.status.emit("Open an image first.")
            return
        session, name, frame = self.session, self.name, self.frame()
        self.find_button.setEnabled(False)
        self.status.emit(f"Finding the objects of {name}…")

        def done(found) -> None:
            self.find_button.setEnabled(True)
            if session is self.session and name == self.name:
                self.show(*found)

        def job(ctx):
            props = propose_objects(session.model, name, frame)
            return props, outlines(props.instances)  # off the UI thread: the layer needs no contour pass

        def error(err) -> None:
            self.find_button.setEnabled(True)

        self.queue.submit("objects", job, done,
                          channel="objects", on_error=error)

    def show(self, props: Proposals, outline: np.ndarray | None = None) -> None:
        """List ``props`` and outline them in the proposals layer (``outline``: their
        :func:`~napari_hitl.instances.outlines`, computed here when not given)."""
        self.proposals = props
        self._fill()
        data = self._outline = outlines(props.instances) if outline is None else outline
        self._ready_layer(f"{props.name} {PROPOSALS_SUFFIX}", data)
        n = len(props.items)
        self.status.emit(f"{n} object{'s' if n != 1 else ''} proposed, least certain first")

    def _fill(self) -> None:
        self.list.clear()
        if self.proposals is None or self.session is None:
            return
        names = {c.id: c.name for c in self.session.project.classes}
        for p in self.proposals.items:
            item = QListWidgetItem(f"#{p.id}  {names.get(p.cls, p.cls)}  {100 * p.confidence:.0f}%  · {p.area} px")
            item.setData(Qt.UserRole, p.id)
            self.list.addItem(item)

    def _selected(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(Qt.UserRole))

    def _answer(self, fn, verb: str) -> None:
        oid = self._selected()
        if oid is None or self.proposals is None:
            self.status.emit("Select an object in the list first.")
            return
        mask = self.proposals.instances == oid
        try:
            fn(self.session, self.proposals, oid)
        except HitlError as err:
            self.failed.emit(err)
            return
        if self.labels_layer is not None:
            show_saved(self.labels_layer, self.session, self.proposals.name, self.proposals.frame, mask)
        row = self.list.currentRow()
        self._fill()
        self.list.setCurrentRow(min(row, self.list.count() - 1))
        if self.layer is not None and self.layer in self.viewer.layers:
            self._outline = np.where(self._outline == oid, 0, self._outline).astype(self._outline.dtype)
            self.layer.data = self._outline
        self.status.emit(f"Object {oid} {verb} (saved); {len(self.proposals.items)} left")

    def _centre(self, item) -> None:
        if self.proposals is None:
            return
        p = self.proposals.get(int(item.data(Qt.UserRole)))
        step = list(self.viewer.camera.center)
        step[-2:] = p.centroid
        self.viewer.camera.center = tuple(step)
        self.list.setCurrentItem(item)
