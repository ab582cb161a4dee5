"""The ranked-images panel and the superpixel suggestions of the open image.

Images are listed with a thumbnail, status and provenance share, sorted by the chosen
score of the model's prediction (local consistency, entropy, margin, diversity or coverage
picks);
double-click opens one. A slide (a large image) is ranked by its windows, each a row of its own
("slide, window (y, x)"); double-clicking one opens the slide there at full resolution. Suggestions are the most uncertain superpixels of the open image,
shown as an outline overlay: accept one (keep the predicted class, saved as an accepted
machine label) or relabel it with the selected class (saved as a human label) in one click,
or accept all that are left in one click once the wrong ones are relabelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_hitl.app.rank import RANKINGS
from napari_hitl.errors import HitlError
from napari_hitl.napari._layers import show_saved
from napari_hitl.napari._progress import JobProgress

if TYPE_CHECKING:  # pragma: no cover
    from napari_hitl.app.session import Session

THUMB = 40


def thumbnail(image: np.ndarray, size: int = THUMB) -> np.ndarray:
    """A small uint8 RGB copy of an image (first frame of a stack), contrast-stretched."""
    img = np.asarray(image)
    if img.ndim == 4 or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        img = img[0]
    img = img[..., :3] if img.ndim == 3 else img
    step = max(1, int(np.ceil(max(img.shape[:2]) / size)))
    small = img[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(small, (1, 99.5))
    small = np.clip((small - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if small.ndim == 2:
        small = np.repeat(small[..., None], 3, axis=2)
    return np.ascontiguousarray(small)


def to_icon(rgb: np.ndarray) -> QIcon:
    h, w = rgb.shape[:2]
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimg))


class RankingPanel(QWidget):
    """The session's images in ranked order (see the module docstring); ``rank_requested`` when
    Predict & rank is pressed, ``progress`` shows the prediction job."""

    rank_requested = Signal()

    def __init__(self):
        super().__init__()
        self.session: Session | None = None
        self.current: str | None = None  # the image shown in the viewer (selected in the list)
        self.rows = None  # list[RankedRow] once ranked
        self.icons: dict[str, QIcon] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Sort by"))
        self.sort_box = QComboBox()
        self.sort_box.addItems(list(RANKINGS))
        self.sort_box.setToolTip("local consistency: unreliable object edges first; entropy / margin: most "
                                 "uncertain first; diversity: k-means picks of varied uncertain images first; "
                                 "coverage: typical images of what your labelled images do not cover yet "
                                 "(on camvid its first picks from all 367 images beat random ones in 3 of 3 "
                                 "seeds; over later rounds it is about as good as random, ahead in some and "
                                 "behind in others: docs/bench/loop_camvid_coverage*.json)")
        row.addWidget(self.sort_box, 1)
        self.rank_button = QPushButton("Predict && rank")
        self.rank_button.setToolTip("Run the model on every image and sort them (in the background)")
        row.addWidget(self.rank_button)
        layout.addLayout(row)
        self.list = QListWidget()
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setToolTip("Double-click an image to open it")
        layout.addWidget(self.list, 1)
        self.progress = JobProgress("ranking", "stop predicting (the images predicted so far are kept)")
        layout.addWidget(self.progress)
        self.sort_box.currentIndexChanged.connect(lambda _: self.resort())
        self.rank_button.clicked.connect(self.rank_requested.emit)

    def set_session(self, session: Session | None) -> None:
        """Show another session's images (None: nothing open), unranked."""
        self.session = session
        self.rows = None
        self.refresh()

    @property
    def choice(self) -> str:
        return self.sort_box.currentText()

    def set_choice(self, choice: str) -> None:
        self.sort_box.setCurrentIndex(self.sort_box.findText(choice))

    def resort(self) -> None:
        """Sort again by the chosen score from the cached predictions (no model call)."""
        session = self.session
        if session is None or not session.predictions:
            self.refresh()
            return
        names = session.names
        labelled = [n for n, c in session.project.all_counts().items() if n in names and (c.human or c.simulated)]
        self.rows = session.rank(self.choice, labelled=labelled)
        self.refresh()

    def order(self) -> list[str]:
        """Image names in the order shown."""
        return [self.list.item(i).data(Qt.UserRole) for i in range(self.list.count())]

    def window(self, item) -> tuple[int, int, int, int] | None:
        """The slide window ``(y0, x0, y1, x1)`` a row points at (None: the whole image)."""
        box = item.data(Qt.UserRole + 2)
        return None if box is None else tuple(int(v) for v in box)

    def values(self) -> list[float]:
        """The shown score of each row, in order (NaN: not predicted yet)."""
        return [self.list.item(i).data(Qt.UserRole + 1) for i in range(self.list.count())]

    def set_thumbnails(self, thumbs: dict[str, np.ndarray]) -> None:
        self.icons.update({name: to_icon(rgb) for name, rgb in thumbs.items()})
        for i in range(self.list.count()):
            item = self.list.item(i)
            icon = self.icons.get(item.data(Qt.UserRole))
            if icon is not None:
                item.setIcon(icon)

    def refresh(self) -> None:
        """Rebuild the rows: status, human share and the chosen score of each image."""
        self.list.clear()
        if self.session is None:
            return
        project = self.session.project
        known = {r.name for r in project.images}
        counts = project.all_counts()  # once: a slide's windows are many rows of one image
        if self.rows is not None and {r.name for r in self.rows} == known:
            entries = [(r.name, r.value, r.picked, r.window) for r in self.rows]
            # ranked: images a human finished go last, they need no more questions
            entries.sort(key=lambda e: counts[e[0]].status == "done")
        else:  # not ranked yet: project order
            entries = [(r.name, float("nan"), False, None) for r in project.images]
        short = {"local consistency": "consistency"}.get(self.choice, self.choice)
        for name, value, picked, window in entries:
            rec = project.record(name)
            c = counts[name]
            share = 100.0 * c.human / max(c.total, 1)
            frames = f", {rec.frames} frames" if rec.is_stack else ""
            score = "" if np.isnan(value) else f"  {short} {value:.3f}{' ★' if picked else ''}"
            where = "" if window is None else f", window ({window[0]}, {window[1]})"
            item = QListWidgetItem(f"{name}{where}  [{c.status}, {share:.0f}% human{frames}]{score}")
            item.setData(Qt.UserRole, name)
            item.setData(Qt.UserRole + 1, float(value))
            item.setData(Qt.UserRole + 2, None if window is None else list(window))
            tot = max(c.total, 1)
            item.setToolTip(f"{name}: human {100 * c.human / tot:.1f}%, accepted {100 * c.machine / tot:.1f}%, "
                            f"pseudo {100 * c.pseudo / tot:.1f}%, unlabelled {100 * c.unlabelled / tot:.1f}%")
            if name in self.icons:
                item.setIcon(self.icons[name])
            self.list.addItem(item)
            if name == self.current and window is None:
                item.setSelected(True)


class SuggestionsPanel(QWidget):
    """Superpixel suggestions of the open image (see the module docstring), drawn in ``viewer``;
    answers are saved through the session. Asks with ``suggest_requested``, tells with
    ``status`` and ``failed`` (an error the person can fix)."""

    suggest_requested = Signal()
    status = Signal(str)
    failed = Signal(object)

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.session: Session | None = None
        self.shown: str | None = None  # the image in the viewer
        self.labels_layer = None  # its labels layer
        self.current_class = lambda: 1  # the class Relabel gives (the dock's class selector)
        self.image: str | None = None  # the image the suggestions are of
        self.frame = 0
        self.segments: np.ndarray | None = None
        self.items: list = []  # Suggestion, in rank order
        self.n_segments = 150  # superpixel count of the segments shown
        # answered superpixel ids per (image, frame, superpixel count): ids differ between counts
        self.asked: dict[tuple[str, int, int], set[int]] = {}
        self.layer = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.count = QSpinBox()
        self.count.setRange(1, 5000)
        self.count.setValue(8)
        self.count.setPrefix("top ")
        self.count.setToolTip("How many superpixels to suggest; as many as the image has outlines them all: "
                              "relabel the wrong ones, then Accept all corrects the whole image")
        self.size = QSpinBox()
        self.size.setRange(10, 5000)
        self.size.setValue(self.n_segments)
        self.size.setSuffix(" per image")
        self.size.setToolTip("How many superpixels the image is cut into: more follow thin structures "
                             "(poles, signs, cell edges) closely, and each wrong one costs a click. On camvid "
                             "at half size, 400 instead of 200 took the model from 94% to 97% of full "
                             "supervision within 15% of its clicks (docs/bench/loop_camvid_seeds400.json)")
        self.suggest_button = QPushButton("Suggest superpixels")
        self.suggest_button.setToolTip("Outline the open image's most uncertain superpixels (G: click them "
                                       "in the viewer: left accepts, right/Ctrl relabels)")
        row.addWidget(self.count)
        row.addWidget(self.size)
        layout.addLayout(row)
        layout.addWidget(self.suggest_button)
        self.hint = QLabel("Train a round (or use the untrained model), then Suggest superpixels: the most "
                           "uncertain ones are outlined on the image and listed here.")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: gray")
        layout.addWidget(self.hint)
        # the list and its answer buttons show only while there are suggestions
        self.answers = QWidget()
        answers = QVBoxLayout(self.answers)
        answers.setContentsMargins(0, 0, 0, 0)
        self.list = QListWidget()
        self.list.setMaximumHeight(130)
        answers.addWidget(self.list)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept ✓")
        self.accept_button.setToolTip("Keep the predicted class of the selected superpixel")
        self.relabel_button = QPushButton("Relabel")
        self.relabel_button.setToolTip("Give the selected superpixel the class selected under Annotate")
        self.accept_all_button = QPushButton("Accept all ✓✓")
        self.accept_all_button.setToolTip("Keep the predicted class of every superpixel still outlined, in one "
                                          "click: relabel the wrong ones first (with all of them suggested, the "
                                          "whole image is corrected this way)")
        row.addWidget(self.accept_button)
        row.addWidget(self.relabel_button)
        row.addWidget(self.accept_all_button)
        answers.addLayout(row)
        layout.addWidget(self.answers)
        self.answers.setVisible(False)
        self.suggest_button.clicked.connect(self.suggest_requested.emit)
        self.accept_button.clicked.connect(lambda: self._guard(self.accept, self.list.currentRow()))
        self.relabel_button.clicked.connect(lambda: self._guard(self.relabel, self.list.currentRow()))
        self.accept_all_button.clicked.connect(lambda: self._guard(self.accept_all))
        self.list.itemDoubleClicked.connect(lambda _: self._guard(self.accept, self.list.currentRow()))

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except HitlError as err:
            self.failed.emit(err)

    def image_shown(self, session: Session | None, name: str | None, labels_layer) -> None:
        """The viewer shows image ``name`` of ``session`` in ``labels_layer`` (None: nothing)."""
        self.session, self.shown, self.labels_layer = session, name, labels_layer

    # ------------------------------------------------------------------ showing
    def show_suggestions(self, name: str, frame: int, segments: np.ndarray, suggestions: list,
                         n_segments: int) -> None:
        """Show new suggestions for image ``name`` (frame ``frame``, cut into about ``n_segments``
        superpixels) as list rows and an overlay."""
        if name != self.shown:
            return
        self.image, self.frame, self.segments, self.items = name, frame, segments, list(suggestions)
        self.n_segments = n_segments
        self._redraw()

    def clear(self) -> None:
        self.image, self.segments, self.items = None, None, []
        self.list.clear()
        self.hint.setVisible(True)
        self.answers.setVisible(False)
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None

    def _overlay(self) -> np.ndarray:
        data = np.zeros(self.labels_layer.data.shape, np.uint16)
        plane = data[self.frame] if data.ndim == 3 else data
        lut = np.zeros(int(self.segments.max()) + 1, np.uint16)  # one pass, however many are suggested
        for rank, s in enumerate(self.items, start=1):
            lut[s.segment] = rank
        plane[...] = lut[self.segments]
        return data

    def _redraw(self) -> None:
        self.list.clear()
        self.hint.setVisible(not self.items)
        self.answers.setVisible(bool(self.items))
        classes = {c.id: c.name for c in self.session.project.classes}
        for rank, s in enumerate(self.items, start=1):
            self.list.addItem(f"#{rank}  uncertainty {s.score:.2f}  → {classes.get(s.predicted_class, s.predicted_class)}"
                              f"  ({s.area} px)")
        if self.items:
            self.list.setCurrentRow(0)
        viewer = self.viewer
        data = self._overlay()
        if self.layer is None or self.layer not in viewer.layers:
            self.layer = viewer.add_labels(data, name=f"{self.image} suggestions", opacity=0.9, blending="translucent")
            self.layer.contour = 2
            self.layer.editable = False
            self.layer.metadata["hitl_prompts"] = True
            if self.labels_layer is not None:
                viewer.layers.selection.active = self.labels_layer
        else:
            self.layer.data = data
        self.status.emit(f"{len(self.items)} suggestions: Accept keeps the predicted class, Relabel uses the selected one")

    # ------------------------------------------------------------------ answering
    def click_at(self, frame: int, y: float, x: float, positive: bool) -> None:
        """One click in the viewer on a suggested superpixel: accept (positive) or relabel."""
        if self.segments is None or frame != self.frame:
            return
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < self.segments.shape[0] and 0 <= ix < self.segments.shape[1]):
            return
        seg = int(self.segments[iy, ix])
        for i, s in enumerate(self.items):
            if s.segment == seg:
                (self.accept if positive else self.relabel)(i)
                return
        self.status.emit("That is not a suggested superpixel (the outlined ones are).")

    def accept(self, index: int) -> None:
        """Keep the predicted class of suggestion ``index`` (saved as an accepted machine label)."""
        if 0 <= index < len(self.items):
            s = self.items[index]
            self._answer(index, s.predicted_class, "machine")

    def accept_all(self) -> None:
        """Keep the predicted class of every remaining suggestion (saved as accepted machine labels)."""
        if not self.items:
            return
        lut = np.zeros(int(self.segments.max()) + 1, np.uint16)
        chosen = np.zeros(len(lut), bool)
        for s in self.items:
            lut[s.segment], chosen[s.segment] = s.predicted_class, True
        n = len(self.items)
        self._commit(lut[self.segments], chosen[self.segments], "machine", [s.segment for s in self.items])
        self.items = []
        self._redraw()
        self.status.emit(f"{n} superpixels saved as accepted machine labels")

    def relabel(self, index: int, label: int | None = None) -> None:
        """Give suggestion ``index`` the selected class (saved as a human label)."""
        if 0 <= index < len(self.items):
            lab = label if label is not None else int(self.current_class())
            self._answer(index, lab, "human")

    def _answer(self, index: int, label: int, source: str) -> None:
        s = self.items[index]
        mask = self.segments == s.segment
        self._commit(np.full(mask.shape, label, np.uint16), mask, source, [s.segment])
        del self.items[index]
        self._redraw()
        self.status.emit(f"Superpixel saved as {source} label {label}; {len(self.items)} suggestions left")

    def _commit(self, plane: np.ndarray, mask: np.ndarray, source: str, segments: list[int]) -> None:
        """Save ``plane`` on ``mask`` to the project and show what was saved on the labels layer."""
        layer = self.labels_layer
        frame = self.frame if layer.ndim == 3 else None
        self.session.commit(self.image, plane, source=source, where=mask, frame=frame)
        show_saved(layer, self.session, self.image, frame, mask)
        self.asked.setdefault((self.image, self.frame, self.n_segments), set()).update(segments)
