"""The annotation dock: open or create a project, browse its images, accept labels, export.

The dock owns the one writable :class:`~napari_hitl.project.Project` of the viewer. Layers
that carry ``metadata['hitl_project']`` (from the reader or a sample) are adopted: the dock
opens their project and shows its images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hitl.errors import HitlError
from napari_hitl.napari._layers import META_IMAGE, META_PROJECT, image_layer_data
from napari_hitl.project import Project
from napari_hitl.samples import SAMPLES, sample_project

DOCK_NAME = "Annotation dock (napari-hitl)"


def find_dock(viewer) -> HitlWidget | None:
    """The HitlWidget docked in ``viewer``, if any."""
    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, HitlWidget):
            return widget
    return None


class HitlWidget(QWidget):
    """Dock widget: project section (open / new / sample), image list, accept, export."""

    #: emitted with the image name after its layers are shown
    image_opened = Signal(str)
    #: emitted after a project is opened or closed
    project_changed = Signal()

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.current: str | None = None
        self.image_layer = None
        self.labels_layer = None

        self.setToolTip("napari-hitl: open a project, pick an image, annotate, press Accept (Ctrl+Enter).")
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open project…")
        self.new_button = QPushButton("New from folder…")
        self.sample_box = QComboBox()
        self.sample_box.addItem("Open sample…")
        self.sample_box.addItems(sorted(SAMPLES))
        row.addWidget(self.open_button)
        row.addWidget(self.new_button)
        row.addWidget(self.sample_box)
        layout.addLayout(row)
        self.project_label = QLabel("No project open")
        self.project_label.setWordWrap(True)
        layout.addWidget(self.project_label)
        self.image_list = QListWidget()
        layout.addWidget(self.image_list)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept labels")
        self.accept_button.setToolTip("Save the labels layer as human labels of this image (Ctrl+Enter)")
        self.next_button = QPushButton("Next ▶")
        row.addWidget(self.accept_button)
        row.addWidget(self.next_button)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.open_button.clicked.connect(self._ask_open)
        self.new_button.clicked.connect(self._ask_new)
        self.sample_box.activated.connect(self._sample_chosen)
        self.image_list.itemActivated.connect(self._item_activated)
        self.image_list.itemDoubleClicked.connect(self._item_activated)
        self.accept_button.clicked.connect(self.accept_labels)
        self.next_button.clicked.connect(self.open_next)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        for layer in list(self.viewer.layers):
            self._adopt(layer)

    # ------------------------------------------------------------------ project
    def open_project(self, path_or_project, show: bool = True) -> None:
        """Open a project (a path, or an already-open Project); ``show`` its first image."""
        project = path_or_project if isinstance(path_or_project, Project) else Project.open(path_or_project)
        if self.project is not None and self.project.root != project.root:
            self.project.close()
        self.project = project
        self.project_label.setText(f"<b>{project.name}</b> — {len(project)} images, "
                                   f"classes: {', '.join(c.name for c in project.classes[1:])}<br>{project.root}")
        self.refresh_list()
        self.project_changed.emit()
        if show:
            self.show_image(project.images[0].name)

    def close_project(self) -> None:
        if self.project is not None:
            self.project.close()
        self.project = None
        self.current = None
        self.image_list.clear()
        self.project_label.setText("No project open")
        self.project_changed.emit()

    def _guard(self, fn, *args):
        """Run a user action; an error the user can fix becomes a notification."""
        try:
            return fn(*args)
        except HitlError as err:
            show_error(str(err))
            self.status.setText(f"⚠ {err}")
        return None

    def _ask_open(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open napari-hitl project")
        if path:
            self._guard(self.open_project, path)

    def _ask_new(self) -> None:
        source = QFileDialog.getExistingDirectory(self, "Folder of images")
        if not source:
            return
        dest = QFileDialog.getExistingDirectory(self, "Empty folder for the new project")
        if dest:
            target = Path(dest) / f"{Path(source).name}-project" if any(Path(dest).iterdir()) else Path(dest)
            self._guard(lambda: self.open_project(Project.create(target, source)))

    def _sample_chosen(self, index: int) -> None:
        if index > 0:
            self._guard(lambda: self.open_project(sample_project(self.sample_box.itemText(index))))
        self.sample_box.setCurrentIndex(0)

    def _layer_inserted(self, event) -> None:
        self._adopt(event.value)

    def _adopt(self, layer) -> None:
        """Adopt the project of a layer added by the reader or a sample."""
        root = layer.metadata.get(META_PROJECT) if hasattr(layer, "metadata") else None
        if root is None:
            return
        name = layer.metadata.get(META_IMAGE)
        kind = type(layer).__name__.lower()
        if self.project is None or str(self.project.root) != str(root):
            # bind, never replace: this runs inside napari's layer-insertion event
            self.current = name
            self.image_layer = self.labels_layer = None
            self._bind(kind, layer)
            self._guard(self.open_project, root, False)
        elif name == self.current:
            self._bind(kind, layer)

    def _bind(self, kind: str, layer) -> None:
        if kind == "image":
            self.image_layer = layer
        elif kind == "labels":
            self.labels_layer = layer

    # ------------------------------------------------------------------ images
    def refresh_list(self) -> None:
        """Rebuild the image list with each image's status and human share."""
        self.image_list.clear()
        if self.project is None:
            return
        for rec in self.project.images:
            counts = self.project.counts(rec.name)
            share = 100.0 * counts.human / max(counts.total, 1)
            frames = f", {rec.frames} frames" if rec.is_stack else ""
            item = QListWidgetItem(f"{rec.name}  [{counts.status}, {share:.0f}% human{frames}]")
            item.setData(Qt.UserRole, rec.name)
            self.image_list.addItem(item)
            if rec.name == self.current:
                item.setSelected(True)

    def _item_activated(self, item) -> None:
        self._guard(self.show_image, item.data(Qt.UserRole))

    def show_image(self, name: str) -> None:
        """Replace the shown image and labels layers with those of ``name``."""
        if self.project is None:
            return
        data = image_layer_data(self.project, name)
        for layer in (self.image_layer, self.labels_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.current = name
        (img, img_kw, _), (lab, lab_kw, _) = data
        self.image_layer = self.viewer.add_image(img, **img_kw)
        self.labels_layer = self.viewer.add_labels(lab, **lab_kw)
        self.viewer.layers.selection.active = self.labels_layer
        self.refresh_list()
        self.status.setText(f"Showing {name}")
        self.image_opened.emit(name)

    def open_next(self) -> None:
        """Show the next image that is not fully labelled by a human."""
        if self.project is None:
            return
        names = [r.name for r in self.project.images]
        start = names.index(self.current) + 1 if self.current in names else 0
        for name in names[start:] + names[:start]:
            if self.project.counts(name).status != "done":
                self._guard(self.show_image, name)
                return
        show_info("Every image is labelled by a human.")

    def accept_labels(self) -> None:
        """Commit the labels layer as human labels of the current image (saved at once)."""
        if self.project is None or self.labels_layer is None or self.current is None:
            show_error("Open a project and an image first.")
            return

        def commit():
            counts = self.project.commit_labels(self.current, np.asarray(self.labels_layer.data), source="human")
            self.status.setText(f"Saved {self.current}: {counts.human} human pixels")
            self.refresh_list()

        self._guard(commit)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.close_project()
        super().closeEvent(event)
