"""The annotation dock: project, interactive tools, objects, ranked images, suggestions, training, export.

The dock holds the viewer's one :class:`~napari_hitl.app.session.Session` (the writable
project, its lock, model and predictions). Its Labels layer shows one id per object and
keeps each id's class in its metadata; accepting saves the objects, and object edits
(delete, merge, split, undo) are saved and journalled at once. Layers that carry ``metadata['hitl_project']``
(from the reader or a sample) are adopted: the dock opens their project and shows its
images. Every session job runs on the dock's :class:`~napari_hitl.napari._worker.ModelQueue`;
the UI thread only paints results.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_hitl.app.export import summary_text
from napari_hitl.app.model_host import warm_up
from napari_hitl.app.session import Session
from napari_hitl.errors import HitlError, InputError
from napari_hitl.napari._annotate import AnnotatePanel
from napari_hitl.napari._layers import (META_CLASSES, META_IMAGE, META_PROJECT, can_refill, claim_project_folder,
                                        close_lazy, image_layer_data, label_colormap, refill_layers, show_saved)
from napari_hitl.napari._prediction import PredictionLayers
from napari_hitl.napari._ranking import RankingPanel, SuggestionsPanel, thumbnail
from napari_hitl.napari._section import section
from napari_hitl.napari._slide import SLIDE_ENGINE, SlideTools
from napari_hitl.napari._tools import MODES, SHORTCUTS, ToolController, check_engine, shortcut_help
from napari_hitl.napari._training import ExportPanel, TrainingPanel
from napari_hitl.napari._objects import ObjectsPanel
from napari_hitl.napari._video import VideoPanel
from napari_hitl.napari._worker import ModelQueue
from napari_hitl.project import Project
from napari_hitl.samples import SAMPLES, sample_project

DOCK_NAME = "Annotation dock (napari-hitl)"


#: the dock's widest, in pixels: napari's default window keeps a canvas of about 420 px beside it
DOCK_WIDTH = 350


def find_dock(viewer) -> HitlWidget | None:
    """The HitlWidget docked in ``viewer``, if any."""
    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, HitlWidget):
            return widget
    return None


class HitlWidget(QWidget):
    """Dock widget: project section, tools, ranked images and suggestions, training, export."""

    #: emitted with the image name after its layers are shown
    image_opened = Signal(str)
    #: emitted after a project is opened or closed
    project_changed = Signal()

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self._current: str | None = None
        self.image_layer = None
        self.labels_layer = None
        self.picked: list[int] = []  # the last two objects picked (napari selected label), for Merge
        self.train_job = None
        self._devices: dict[str, str] = {}
        self.queue = ModelQueue(self)
        self.tools = ToolController(napari_viewer, self.queue)
        self.slide = SlideTools(napari_viewer, self.queue, self.tools.host)  # the click tool on a large image
        self.slide.mode = lambda: self.tools.mode
        self.slide.cls = self.tools.label
        self.prediction = PredictionLayers(napari_viewer)  # the model's view of the shown image

        self.setToolTip("napari-hitl: open a project, pick an image, click / scribble / extreme points, "
                        "press Accept.\n\nShortcuts (on the labels layer):\n" + shortcut_help())
        # narrow enough for napari's default window (1089x702) beside its layer controls
        self.setMaximumWidth(DOCK_WIDTH)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open…")
        self.new_button = QPushButton("New…")
        self.sample_box = QComboBox()
        self.sample_box.addItem("Sample…")
        self.sample_box.addItems(sorted(SAMPLES))
        self.open_button.setToolTip("Open a napari-hitl project folder")
        self.new_button.setToolTip("Create a project from a folder of images (or a time-lapse)")
        self.sample_box.setToolTip("Open a ready-to-try sample project")
        row.addWidget(self.open_button)
        row.addWidget(self.new_button)
        row.addWidget(self.sample_box)
        layout.addLayout(row)
        self.project_label = QLabel("No project open")
        self.project_label.setWordWrap(True)
        layout.addWidget(self.project_label)
        self.device_label = QLabel("Device: chosen when the model first runs")
        self.device_label.setWordWrap(True)
        layout.addWidget(self.device_label)
        self.annotate = AnnotatePanel(self.tools.engine_name, self.tools.full_image)
        self.annotate.setTitle("")
        self.annotate.setFlat(True)
        self.annotate.layout().setContentsMargins(0, 0, 0, 0)
        layout.addWidget(section("Annotate", self.annotate, expanded=True))
        self.ranking = RankingPanel()
        self.image_list = self.ranking.list
        self.suggestions = SuggestionsPanel(napari_viewer)
        self.training = TrainingPanel()
        self.exporter = ExportPanel()
        self.rank_job = None
        self.tabs = QTabWidget()
        images = QWidget()
        box = QVBoxLayout(images)
        box.setContentsMargins(2, 2, 2, 2)
        box.addWidget(self.ranking, 3)
        self.suggestions_section = section("Suggested superpixels", self.suggestions, expanded=False)
        box.addWidget(self.suggestions_section)
        self.objects = ObjectsPanel(napari_viewer, self.queue)
        self.objects.frame = lambda: self.tools.frame() if self.project is not None and self.current is not None \
            and self.project.record(self.current).is_stack else None
        box.addWidget(section("Objects", self.objects, expanded=False))
        self.video = VideoPanel(napari_viewer, self.queue)
        box.addWidget(section("Time-lapse", self.video, expanded=False))
        self.tabs.addTab(images, "Images")
        self.tabs.addTab(self.training, "Train")
        self.tabs.addTab(self.exporter, "Export")
        layout.addWidget(self.tabs, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        for combo in (self.sample_box, self.annotate.class_box, self.annotate.engine_box, self.ranking.sort_box):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)  # shrink with the dock; the full text is in the list

        self.open_button.clicked.connect(self._ask_open)
        self.new_button.clicked.connect(self._ask_new)
        self.sample_box.activated.connect(self._sample_chosen)
        self.image_list.itemActivated.connect(self._item_activated)
        self.image_list.itemDoubleClicked.connect(self._item_activated)
        self.annotate.mode_chosen.connect(lambda mode: self._guard(self.tools.set_mode, mode))
        self.annotate.engine_chosen.connect(lambda name: self._guard(self.set_engine, name))
        self.annotate.full_image_toggled.connect(lambda on: setattr(self.tools, "full_image", on))
        self.annotate.brush_changed.connect(self._brush_changed)
        self.annotate.class_chosen.connect(self._class_chosen)
        self.annotate.action_requested.connect(self.run_action)
        self.queue.busy_changed.connect(self._busy)
        self.tools.status.connect(self.say)
        self.tools.mode_changed.connect(self.tool_changed)
        self.tools.action_requested.connect(self.run_action)
        self.tools.engine_ready.connect(self.engine_ready)
        self.tools.suggestion_clicked.connect(lambda t, y, x, positive: self._guard(
            self.suggestions.click_at, t, y, x, positive))
        self.tools.failed.connect(self._report)
        self.slide.status.connect(self.say)
        self.slide.failed.connect(self._report)
        self.tools.split_asked.connect(lambda t, pts, kind: self._guard(self.split_object, t, pts, kind))
        self.ranking.rank_requested.connect(self.rank)
        self.ranking.progress.cancel_requested.connect(self.cancel_ranking)
        self.training.train_requested.connect(self.train)
        self.training.progress.cancel_requested.connect(self.cancel_training)
        self.exporter.export_requested.connect(self.export)
        self.suggestions.current_class = lambda: self.tools.cls
        self.suggestions.suggest_requested.connect(self.suggest)
        self.suggestions.status.connect(self.say)
        self.suggestions.failed.connect(self._report)
        self.video.status.connect(self.say)
        self.video.labels_saved.connect(self.reload_labels)
        self.objects.status.connect(self.say)
        self.objects.failed.connect(self._report)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(lambda event: close_lazy(event.value))  # its file goes with it
        for layer in list(self.viewer.layers):
            self._adopt(layer)

    @property
    def project(self) -> Project | None:
        """The open project (the session's), or None."""
        return None if self.session is None else self.session.project

    @property
    def current(self) -> str | None:
        """The name of the image shown in the viewer."""
        return self._current

    @current.setter
    def current(self, name: str | None) -> None:
        self._current = name
        self.ranking.current = name

    # ------------------------------------------------------------------ small helpers
    def say(self, text: str) -> None:
        """Show a line of status at the bottom of the dock."""
        self.status.setText(text)

    def _guard(self, fn, *args):
        """Run a user action; an error the user can fix becomes a notification."""
        try:
            return fn(*args)
        except HitlError as err:
            self._report(err)
        return None

    def _report(self, err: HitlError) -> None:
        """An error the person can fix: a notification and the status line."""
        show_error(str(err))
        self.status.setText(f"⚠ {err}")

    def run_action(self, action: str) -> None:
        """Run a named action (tool buttons and keyboard shortcuts share these)."""
        if action in MODES:
            self._guard(self.tools.set_mode, action)
        elif action == "new_region":
            if self.slide.active:
                self.slide.new_region = True
            else:
                self.tools.new_region()
        elif action == "undo":
            self._guard(self.slide.undo if self.slide.active else self.tools.undo)
        elif action == "reset":
            self._guard(self.slide.reset if self.slide.active else self.tools.reset)
        elif action == "accept":
            self.accept_labels()
        elif action == "next":
            self.open_next()
        elif action == "delete_object":
            self._guard(self.edit_objects, "delete")
        elif action == "merge_objects":
            self._guard(self.edit_objects, "merge")
        elif action == "split_object":
            self._guard(self.start_split)
        elif action == "undo_edit":
            self._guard(self.undo_edit)
        else:
            raise HitlError(f"unknown action {action!r}")

    def tool_changed(self, mode: str) -> None:
        self.annotate.show_mode(mode)

    def set_engine(self, name: str) -> None:
        """Choose the interactive engine by name ('clicknet', 'graph')."""
        self.tools.engine_name = check_engine(name)
        self.annotate.show_engine(name)
        self.tools.prepare()

    def engine_ready(self, device: str) -> None:
        self.show_device(clicks=f"{self.tools.engine_name} on {device}" if device else None)

    def show_device(self, model: str | None = None, clicks: str | None = None) -> None:
        """Say where the trainable model and the click engine run (GPU name or CPU)."""
        if model:
            self._devices["model"] = model
        if clicks:
            self._devices["clicks"] = clicks
        parts = [f"{k}: {v}" for k, v in self._devices.items()]
        self.device_label.setText("Device — " + " · ".join(parts))

    def _busy(self, busy: bool) -> None:
        if not busy and self.status.text() in ("Segmenting…", "Working…"):
            self.say("Ready")

    def _class_chosen(self, cid: int) -> None:
        """A class picked in the dock: new regions get it, and napari's brush paints a new object of it."""
        layer = self.labels_layer
        if layer is not None:
            self.tools.pin_classes()  # brush objects keep the class they were painted with
        self.tools.cls = int(cid)
        if layer is not None:
            s = self.tools.session()
            if self.tools.known_classes().get(int(layer.selected_label)) != cid:
                layer.selected_label = self._fresh_id()
            if s is not None:
                s.new_region = True

    def _fresh_id(self) -> int:
        """A new object id of the shown image (the project hands it out; never reused)."""
        if self.session is not None and self.current is not None:
            return self.session.reserve_id(self.current)
        return int(np.asarray(self.labels_layer.data).max()) + 1

    def _sync_class(self, event=None) -> None:
        """napari's selected label picks an object: the dock shows its class, and remembers the
        object picked before it (Merge joins the two)."""
        layer = self.labels_layer
        if layer is None:
            return
        oid = int(layer.selected_label)
        if oid and oid != (self.picked[-1] if self.picked else None):
            self.picked = [*self.picked[-1:], oid]
        cls = self.tools.known_classes().get(oid)
        if cls is not None:
            self.tools.cls = int(cls)
            self.annotate.show_class(int(cls))

    # ------------------------------------------------------------------ object edits
    def _plane_and_classes(self) -> tuple[np.ndarray, dict[int, int], int | None]:
        if self.project is None or self.labels_layer is None or self.current is None:
            raise InputError("Open a project and an image first.")
        self._refuse_slide("Delete, Merge, Split and Undo edit work on a whole plane")
        t = self.tools.frame()
        data = np.asarray(self.labels_layer.data)
        stack = self.project.record(self.current).is_stack
        plane = data[t] if stack else data
        return plane, self.tools.object_classes(t), (t if stack else None)

    def edit_objects(self, op: str) -> None:
        """Delete the selected object, or merge the object picked before it into it (saved and
        journalled at once; Undo edit takes it back)."""
        plane, classes, frame = self._plane_and_classes()
        oid = int(self.labels_layer.selected_label)
        if oid not in classes:
            raise InputError(f"Object {oid} is not in this image: pick an object with napari's label picker first.")
        if op == "merge":
            other = next((p for p in reversed(self.picked[:-1]) if p != oid and p in classes), None)
            if other is None:
                raise InputError("Merge joins two objects: pick one, then the other (napari's label picker), "
                                 "then Merge.")
            ids = [oid, other]
        else:
            ids = [oid]
        new, new_classes = self.session.edit_objects(self.current, plane, classes, op, ids, frame=frame)
        self._show_plane(new, new_classes, frame)
        self.say(f"{'Deleted' if op == 'delete' else 'Merged'} object{'s' if op == 'merge' else ''} "
                 f"{', '.join(map(str, ids))} (saved; Undo edit takes it back)")

    def start_split(self) -> None:
        """Split mode: a stroke across the selected object, or two clicks on its two parts."""
        plane, classes, _ = self._plane_and_classes()
        if int(self.labels_layer.selected_label) not in classes:
            raise InputError("Pick the object to split first (napari's label picker).")
        self.tools.set_mode("split")
        self.say("Split: draw a stroke across the object, or click its two parts")

    def split_object(self, t: int, points, kind: str) -> None:
        plane, classes, frame = self._plane_and_classes()
        oid = int(self.labels_layer.selected_label)
        if kind == "line":
            from napari_hitl.prompts import line_map

            line = line_map(np.asarray(points, np.float64), plane.shape, width=3).astype(bool)
            new, new_classes = self.session.edit_objects(self.current, plane, classes, "split", [oid], frame=frame,
                                                         line=line)
        else:
            seeds = tuple((int(round(y)), int(round(x))) for y, x in points)
            new, new_classes = self.session.edit_objects(self.current, plane, classes, "split", [oid], frame=frame,
                                                         seeds=seeds)
        self._show_plane(new, new_classes, frame)
        self.tools.set_mode("off")
        self.say(f"Split object {oid} in two (saved; Undo edit takes it back)")

    def undo_edit(self) -> None:
        done = self.session.undo_edit() if self.session is not None else None
        if done is None:
            self.say("No object edit to undo.")
            return
        edit, plane, classes = done
        if edit.name == self.current and self.labels_layer is not None:
            mask = np.zeros(plane.shape, bool)
            mask.ravel()[edit.pixels] = True
            show_saved(self.labels_layer, self.session, edit.name, edit.frame, mask)  # unsaved work elsewhere stays
            s = self.tools.sessions.get((self.current, edit.frame or 0))
            if s is not None:
                s.absorb(self.tools.plane(edit.frame or 0))
                s.classes.update(classes)
        self.say(f"Undid the {edit.op} (saved)")

    def _show_plane(self, plane: np.ndarray, classes: dict[int, int], frame: int | None) -> None:
        """Show an edited plane; its objects and classes become the prompts' starting point."""
        layer = self.labels_layer
        current = np.asarray(layer.data)
        now = current[frame] if frame is not None else current
        changed = np.nonzero(now != plane)
        if changed[0].size:
            idx = changed if frame is None else (np.full_like(changed[0], frame), *changed)
            with layer.block_history():
                layer.data_setitem(idx, plane[changed].astype(layer.data.dtype))
        layer.metadata[META_CLASSES] = {**self.tools.layer_classes(), **classes}
        s = self.tools.sessions.get((self.current, frame or 0))
        if s is not None:
            s.commit(plane, classes)

    def _refuse_slide(self, what: str) -> None:
        """A dock action that needs the whole image refuses a large one, saying so."""
        if self.slide.active:
            raise InputError(f"{what}; {self.current!r} is a large image, never read whole. On it: the click, "
                             "scribble and extreme-point tools (on new objects or to correct a saved one), Accept, "
                             "and export as zarr or TIFF.")

    def _brush_changed(self, value: int) -> None:
        if self.labels_layer is not None:
            self.labels_layer.brush_size = int(value)

    # ------------------------------------------------------------------ project
    def open_project(self, path_or_project, show: bool = True) -> None:
        """Open a project (a path, or an already-open Project); ``show`` its first image."""
        project = path_or_project if isinstance(path_or_project, Project) else Project.open(path_or_project)
        if self.project is not None and self.project.root != project.root:
            if not self._saves_ended():
                if project is not path_or_project:
                    project.close()
                return
            self.queue.cancel()
            self.session.close(dask_in_background=True)
        self.tools.host.forget()  # an image of the same name in this project is another image
        self.session = Session(project)
        claim_project_folder(project.root)  # `napari PROJECT` opens it without a reader dialog from now on
        self.session.on("committed", self._committed)
        self.ranking.set_session(self.session)
        self.project_label.setText(f"<b>{project.name}</b> — {len(project)} images, "
                                   f"classes: {', '.join(c.name for c in project.classes[1:])}")
        self.project_label.setToolTip(str(project.root))
        self.annotate.set_classes(project.classes[1:])
        self.refresh_list()
        self._load_thumbnails()
        self.queue.submit("warm-up", warm_up, lambda device: self.show_device(model=device))
        self.project_changed.emit()
        if show:
            self.show_image(project.images[0].name)

    def close_project(self) -> None:
        if not self._saves_ended():
            return
        self.queue.cancel()
        if self.slide.active:  # its labels layer reads the project: it goes with it
            layer = self.labels_layer
            self.slide.detach()
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            self.labels_layer = None
        if self.session is not None:
            self.session.close(dask_in_background=True)
        self.session = None
        self.current = None
        self.ranking.set_session(None)
        self.prediction.clear()
        self.suggestions.image_shown(None, None, None)
        self.objects.image_shown(None, None)
        self.video.image_shown(None, None)
        self.image_list.clear()
        self.project_label.setText("No project open")
        self.project_changed.emit()

    def _saves_ended(self) -> bool:
        """Wait for an Accept on a large image still being saved (cancelling the queue would drop
        it); False, saying so, if it has not ended in time (the project then stays open)."""
        if self.slide.wait_saved():
            return True
        self._report(InputError("The last Accept is still being saved (the worker is busy); the project stays "
                                "open. Try again in a moment."))
        return False

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
            QTimer.singleShot(0, self._attach_adopted)

    def _attach_adopted(self) -> None:
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers \
                and self.tools.layer is not self.labels_layer and self.slide.layer is not self.labels_layer \
                and self.image_layer is not None:  # not yet attached (a large image's: to the slide tools)
            self._attach(self.labels_layer)

    def _attach(self, labels_layer) -> None:
        self.slide.detach()
        if self.project is not None and self.current is not None and self.project.is_slide(self.current):
            self._attach_slide(labels_layer)
            return
        self.tools.attach(labels_layer, self.image_layer, self.current)
        labels_layer.events.selected_label.connect(self._sync_class)
        labels_layer.brush_size = self.annotate.brush.value()
        self.picked = []
        self.tools.id_source = lambda name=self.current: self.session.reserve_id(name)
        labels_layer.selected_label = self._fresh_id()  # napari's brush starts a new object of the dock's class
        self._sync_class()
        self.suggestions.image_shown(self.session, self.current, labels_layer)
        self.prediction.prepare(self.current, label_colormap(self.project), below=labels_layer, ndim=labels_layer.ndim)
        self.objects.image_shown(self.session, self.current, labels_layer)
        self.video.image_shown(self.session, self.current, labels_layer)

    def _attach_slide(self, labels_layer) -> None:
        """A large image: the click tool of :mod:`napari_hitl.napari._slide` on its lazily read
        labels; the panels that need the whole image are told there is none."""
        self.tools.detach()
        self.slide.attach(self.session, self.current, labels_layer, self.project.open_image(self.current))
        for key, (_, action) in SHORTCUTS.items():
            labels_layer.bind_key(key, lambda layer, a=action: self.run_action(a), overwrite=True)
        self.suggestions.image_shown(None, None, None)
        self.objects.image_shown(None, None)
        self.video.image_shown(None, None)
        self.say(f"{self.current!r} is a large image: click, scribble or mark extreme points of objects (the "
                 f"{SLIDE_ENGINE} engine reads only the crop around them; a prompt on a saved object corrects it), "
                 "then Accept")

    # ------------------------------------------------------------------ images
    def refresh_list(self) -> None:
        """Rebuild the image list (ranked when a ranking exists) with status and human share."""
        self.ranking.refresh()

    def _load_thumbnails(self) -> None:
        project = self.project
        names = [r.name for r in project.images]
        done: dict = {}

        def fn(ctx):
            for name in names:
                if name not in done:
                    if ctx.should_stop():
                        break
                    done[name] = _slide_thumbnail(project, name) if project.is_slide(name) else \
                        thumbnail(project.read_image(name))
            return {k: v for k, v in done.items() if v is not None}

        self.queue.submit("thumbnails", fn, self.ranking.set_thumbnails, preemptible=True)

    def _item_activated(self, item) -> None:
        name, window = item.data(Qt.UserRole), self.ranking.window(item)
        if window is None or name != self.current:
            self._guard(self.show_image, name)
        if window is not None and name == self.current:
            # after show_image's reset_view (queued the same way), so the view ends on the window
            QTimer.singleShot(0, lambda: self.show_window(name, window))

    def show_window(self, name: str, window: tuple[int, int, int, int]) -> None:
        """Centre the viewer on ``window`` ``(y0, x0, y1, x1)`` of the shown image at full resolution
        (one screen pixel per image pixel)."""
        if name != self.current:
            return
        y0, x0, y1, x1 = window
        self.viewer.camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        self.viewer.camera.zoom = 1.0
        self.say(f"Showing {name}, window ({y0}, {x0}) to ({y1}, {x1}) at full resolution")

    def show_image(self, name: str) -> None:
        """Replace the shown image and labels layers with those of ``name``."""
        if self.project is None:
            return
        data = image_layer_data(self.project, name)
        layers = self.viewer.layers
        shown = [lay for lay in (self.image_layer, self.labels_layer) if lay is not None and lay in layers]
        refill = len(shown) == 2 and can_refill(*shown, data)  # see refill_layers: no layer made or removed
        # the kept layers follow the image's dimensions: a plain image after a time-lapse has no
        # 3-D layer left (napari would show a frame slider), nor the time-lapse's unit outline
        stack = self.project.record(name).is_stack
        ndim = 3 if stack else 2
        # where layers must go, napari removes them in one batch: one garbage collection for all
        # (LayerList.batched_update is recent: napari 0.6.6 has none, then they go one by one)
        removing = (not refill or self.slide.active or self.suggestions.layer in layers
                    or bool(self.prediction.other_ndim(ndim)) or (not stack and self.video.outline() is not None))
        batch = getattr(layers, "batched_update", None) if removing else None
        with batch() if batch is not None else contextlib.nullcontext():
            self.slide.detach()
            self.tools.detach(keep_layers=refill)  # the prompt layers stay above the refilled labels
            self.suggestions.clear()
            self.prediction.drop_other_ndim(ndim)  # made again, of the image's dimensions, with its layers
            self.video.release_outline(keep=stack)
            if not refill:
                for layer in shown:
                    layers.remove(layer)
        if self.current is not None:
            self.tools.forget_image(self.current)
        self.prediction.empty(name)
        self.current = name
        if refill:
            refill_layers(*shown, data)
        else:
            (img, img_kw, _), (lab, lab_kw, _) = data
            self.image_layer = self.viewer.add_image(img, **img_kw)
            self.labels_layer = self.viewer.add_labels(lab, **lab_kw)
        self.viewer.layers.selection.active = self.labels_layer
        self._attach(self.labels_layer)
        QTimer.singleShot(0, self.viewer.reset_view)  # fit the image to the canvas as it is now
        self._show_prediction()
        self.refresh_list()
        if not self.slide.active:  # a large image says how to work on it instead
            self.status.setText(f"Showing {name}")
        self.image_opened.emit(name)

    def _show_prediction(self) -> None:
        """Once the model is trained, show its prediction of the shown image (if predicted) as
        layers under the person's labels (see :mod:`napari_hitl.napari._prediction`)."""
        if self.session is None or self.current is None or not self.session.model.trained:
            return
        session, name = self.session, self.current
        if name not in session.predictions:
            return

        def done(preds) -> None:
            if preds and session is self.session and name == self.current:
                self.prediction.show(name, preds, label_colormap(self.project), below=self.labels_layer)

        # read from the cache and decode its objects on the worker, not on the UI thread
        self.queue.submit("show prediction", lambda ctx: session.predictions.get(name), done,
                          channel="show-prediction")

    def open_next(self) -> None:
        """Show the next image that is not fully labelled by a human: the most useful one when the
        images are ranked, else the one after the current image."""
        if self.project is None:
            return
        names = self.ranking.order() or [r.name for r in self.project.images]
        ranked = self.ranking.rows is not None
        start = 0 if ranked else (names.index(self.current) + 1 if self.current in names else 0)
        for name in names[start:] + names[:start]:
            if name != self.current and self.project.counts(name).status != "done":
                self._guard(self.show_image, name)
                return
        show_info("Every image is labelled by a human.")

    def accept_labels(self) -> None:
        """Commit the labels layer as human labels of the current image (saved at once); of a
        time-lapse, only the shown frame's labels."""
        if self.project is None or self.labels_layer is None or self.current is None:
            show_error("Open a project and an image first.")
            return

        def commit():
            if self.slide.active:  # saved on the worker; the slide tool says when
                self.slide.accept()
                return
            data = np.asarray(self.labels_layer.data)
            t = self.tools.frame()
            classes = self.tools.object_classes(t)
            if self.project.record(self.current).is_stack:
                counts = self.session.commit_instances(self.current, data[t], classes, source="human", frame=t)
            else:
                counts = self.session.commit_instances(self.current, data, classes, source="human")
            self.tools.committed(classes)
            self.status.setText(f"Saved {self.current}: {counts.human} human pixels")

        self._guard(commit)

    def _committed(self, name: str, counts) -> None:
        """Any saved answer (accepted labels, suggestions): refresh the list; train when due."""
        self.refresh_list()
        if self.training.auto.isChecked() and self.session.wants_training(self.training.auto_n.value()):
            QTimer.singleShot(0, self.train)

    def reload_labels(self, name: str) -> None:
        """Show the project's saved labels of ``name`` in the labels layer (after propagation)."""
        if name != self.current or self.labels_layer is None or self.project is None:
            return
        ids, _, classes = self.session.read_instances(name)
        self.labels_layer.metadata[META_CLASSES] = dict(classes)
        self.tools.forget_image(name)
        self.labels_layer.data = ids
        self.refresh_list()

    # ------------------------------------------------------------------ model work
    def rank(self) -> None:
        """Predict every image in the background, then sort the list by the chosen score."""
        if self.project is None:
            show_error("Open a project first.")
            return
        session, progress = self.session, self.ranking.progress

        def finished(report):
            self.rank_job = None
            if session is not self.session:
                return
            session.predicted(report)
            self._show_prediction()
            self.ranking.resort()
            self.show_device(model=f"{session.model.trainer.device_description}; batch on "
                                   f"{report.workers} Dask worker{'s' if report.workers != 1 else ''}")
            n = len(report.predicted) + report.skipped
            failed = f"; {len(report.failed)} failed (see the log)" if report.failed else ""
            progress.finish(f"Ranked {n} images by {self.ranking.choice}{failed}")
            self.say(f"Ranked {n} images by {self.ranking.choice}{failed}")

        def failed(err):
            self.rank_job = None
            progress.finish("")

        self.say("Predicting every image…")
        progress.start("starting the workers…")
        self.rank_job = self.queue.submit("rank", session.batch_job(), finished, channel="rank", preemptible=True,
                                          on_error=failed,
                                          on_progress=lambda i, n: progress.step(i, n, f"predicting {i}/{n}"))

    def cancel_ranking(self) -> None:
        """Stop predicting (the images predicted so far are not ranked)."""
        if self.rank_job is not None:
            self.rank_job.cancel()
            self.rank_job = None
        self.ranking.progress.finish("Ranking cancelled.")
        self.say("Ranking cancelled.")

    def suggest(self) -> None:
        """Find the open image's most uncertain superpixels in the background and outline them."""
        if self.project is None or self.current is None:
            show_error("Open an image first.")
            return
        if self.slide.active:
            show_error(f"Superpixel suggestions need the whole image; {self.current!r} is a large image, never "
                       "read whole.")
            return
        session, name, t = self.session, self.current, self.tools.frame()
        k, n_segments = self.suggestions.count.value(), self.suggestions.size.value()
        exclude = self.suggestions.asked.get((name, t, n_segments), set())

        def finished(result):
            preds, seg, sugs = result
            if session is not self.session:
                return
            session.predicted({name: preds})
            self._show_prediction()
            self.suggestions.show_suggestions(name, t, seg, sugs, n_segments)
            self.suggestions_section.expand()

        self.say("Finding uncertain superpixels…")
        self.queue.submit("suggest", session.suggest_job(name, t, k, n_segments, exclude), finished,
                          channel="suggest")

    def train(self) -> None:
        """One training round in the background (pauses for clicks); then re-predict and re-rank."""
        if self.project is None:
            show_error("Open a project first.")
            return
        if self.train_job is not None:
            self.say("Training is already running.")
            return
        session = self.session
        settings = self.training.train_settings()

        def finished(figures):
            self.train_job = None
            self.training.running(False)
            if figures is None or session is not self.session:
                return
            session.trained(figures)
            self.training.figures.setText(figures.text())
            self.show_device(model=figures.device)
            self.refresh_list()
            self.rank()

        def failed(err):
            self.train_job = None
            self.training.running(False)

        self.training.running(True)
        self.say("Training…")
        self.train_job = self.queue.submit("train", session.train_job(settings, self.training.pseudo_settings()),
                                           finished, channel="train", preemptible=True,
                                           on_error=failed, on_progress=self.training.step)

    def cancel_training(self) -> None:
        """Stop the running round between steps (the last checkpoint stays)."""
        if self.train_job is not None:
            self.train_job.cancel()
            self.train_job = None
        self.training.running(False)
        self.say("Training cancelled; the model keeps its last checkpoint.")

    def export(self, out, fmt: str = "tiff") -> None:
        """Export all labels, the model checkpoint and a human-vs-machine summary into ``out``."""
        if self.project is None:
            show_error("Open a project first.")
            return
        def finished(summary):
            self.exporter.summary.setText(f"Exported to {out}<br>{summary_text(summary)}"
                                          f"{'<br>model: ' + summary['model'] if summary['model'] else ''}")
            self.say(f"Exported {len(summary['images'])} images to {out}")

        self.say("Exporting…")
        self.queue.submit("export", self.session.export_job(out, fmt), finished, channel="export")

    def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Docking narrows the canvas: fit the view again once the dock is laid out."""
        super().showEvent(event)
        QTimer.singleShot(0, self.viewer.reset_view)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.queue.stop()
        self.close_project()
        super().closeEvent(event)


def _slide_thumbnail(project, name: str):
    """A large image's thumbnail from its own coarsest pyramid level; None (no thumbnail) for a
    file without a pyramid, whose coarse levels would read the whole image."""
    with project.open_image(name) as img:
        if not img.own_pyramid:
            return None
        level = img.n_levels - 1
        return thumbnail(img.read(0, 0, *img.level_shape(level), level=level))
