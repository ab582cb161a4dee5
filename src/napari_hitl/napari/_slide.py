"""Clicks on a large image (a whole slide) in the dock: the crop around the prompts, never the image.

A large image shows as a multiscale Image layer and its saved objects as a multiscale Labels
layer that reads the project's chunks as napari asks for them (not editable with napari's
brush). The click tool works on it: each region is a new object of the dock's class; its
clicks go to the click engine (``clicknet``, which reads only the crop around them,
:meth:`~napari_hitl.interactive.engine.Engine.predict_window`) on the dock's worker, and the
answer is shown in a small pending Labels layer placed over its window. *Accept* commits each
region's window through the store (:meth:`napari_hitl.app.session.Session.commit_window`,
which rewrites only the chunks it covers) and the saved layer re-reads them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_hitl.errors import HitlError, InputError
from napari_hitl.interactive.engine import Window
from napari_hitl.prompts import Click, RegionPrompts

#: the click engine on a large image: the one that reads only the crop around the prompts
SLIDE_ENGINE = "clicknet"


@dataclass
class SlideRegion:
    """One object being made on a large image: its prompts (with its class), its object id and
    the engine's last answer (a boolean window)."""

    oid: int
    prompts: RegionPrompts
    window: Window | None = None
    history: list = field(default_factory=list)


class SlideTools(QObject):
    """Click tool on a large image (see the module docstring); tells the dock through signals."""

    status = Signal(str)
    failed = Signal(object)

    def __init__(self, viewer, queue, host):
        super().__init__()
        self.viewer, self.queue, self.host = viewer, queue, host
        self.session = None
        self.name: str | None = None
        self.image = None  # the LazyImage
        self.layer = None  # the saved objects (multiscale, read lazily)
        self.pending = None  # the regions' answers, over their windows
        self.regions: list[SlideRegion] = []
        self.new_region = False
        self.mode = lambda: "click"
        self.cls = lambda: 1

    @property
    def active(self) -> bool:
        return self.layer is not None

    def attach(self, session, name: str, labels_layer, image) -> None:
        self.detach()
        self.session, self.name, self.layer, self.image = session, name, labels_layer, image
        labels_layer.editable = False  # a lazily read layer: edits go through the store
        labels_layer.mouse_drag_callbacks.append(self._on_press)
        key, host = (name, 0), self.host
        self.queue.submit("prepare", lambda ctx: host.get(SLIDE_ENGINE, key, image), channel="prepare",
                          interactive=True)

    def detach(self) -> None:
        if self.layer is not None and self._on_press in self.layer.mouse_drag_callbacks:
            self.layer.mouse_drag_callbacks.remove(self._on_press)
        self._drop_pending()
        self.regions, self.layer, self.session, self.name, self.image = [], None, None, None, None

    def _drop_pending(self) -> None:
        if self.pending is not None and self.pending in self.viewer.layers:
            self.viewer.layers.remove(self.pending)
        self.pending = None

    # ------------------------------------------------------------------ prompts
    def _on_press(self, layer, event):
        mode = self.mode()
        if mode == "off":
            return
        if mode != "click":
            self.failed.emit(InputError(f"On a large image only the click tool works (not {mode}): press C."))
            return
        pos = np.asarray(layer.world_to_data(event.position), np.float64)
        mods = {str(getattr(m, "name", m)).lower() for m in (getattr(event, "modifiers", ()) or ())}
        negative = getattr(event, "button", 1) == 2 or "control" in mods or "meta" in mods
        try:
            self.click(float(pos[-2]), float(pos[-1]), not negative)
        except HitlError as err:
            self.failed.emit(err)

    def click(self, y: float, x: float, positive: bool = True) -> None:
        """A click at image pixel (y, x): positive adds to the current region (a new object of
        the dock's class when there is none, or after *New region*), negative removes."""
        if self.layer is None:
            raise InputError("Open a large image first.")
        h, w = self.image.shape[:2]
        if not (0 <= y < h and 0 <= x < w):
            return
        cls = int(self.cls())
        r = self.regions[-1] if self.regions else None
        if r is None or self.new_region or (positive and r.prompts.label != cls):
            if not positive:
                self.status.emit("A negative click needs a region: click positive on the object first.")
                return
            r = SlideRegion(self.session.reserve_id(self.name), RegionPrompts(cls))
            self.regions.append(r)
            self.new_region = False
        r.prompts.clicks.append(Click(float(y), float(x), bool(positive)))
        self.predict(r)

    def undo(self) -> None:
        """Take the last click back (a region without clicks is dropped)."""
        if not self.regions:
            return
        r = self.regions[-1]
        if r.prompts.clicks:
            r.prompts.clicks.pop()
        if not r.prompts.has_positive:
            self.regions.pop()
            self.show()
            return
        self.predict(r)

    def reset(self) -> None:
        """Forget every pending region (nothing was saved)."""
        self.regions = []
        self._drop_pending()
        self.status.emit("Prompts cleared")

    def predict(self, r: SlideRegion) -> None:
        """Run the click engine on the region's crop on the worker; the newest answer is shown."""
        prompts, prev = copy.deepcopy(r.prompts), r.window
        key, image, host = (self.name, 0), self.image, self.host

        def fn(ctx):
            engine = host.get(SLIDE_ENGINE, key, image)
            win = engine.predict_window(prompts, prev_mask=prev)
            return Window(np.asarray(win.data) > 0, win.y0, win.x0)

        def done(win):
            if r in self.regions and self.layer is not None:
                r.window = win
                self.show()

        self.status.emit("Segmenting…")
        self.queue.submit("predict", fn, done, channel="predict", interactive=True)

    def show(self) -> None:
        """The pending regions in a Labels layer over the box their windows span."""
        wins = [(r.oid, r.window) for r in self.regions if r.window is not None]
        if not wins:
            self._drop_pending()
            return
        y0 = min(w.y0 for _, w in wins)
        x0 = min(w.x0 for _, w in wins)
        y1 = max(w.box[2] for _, w in wins)
        x1 = max(w.box[3] for _, w in wins)
        data = np.zeros((y1 - y0, x1 - x0), np.uint32)
        for oid, w in wins:
            wy0, wx0, wy1, wx1 = w.box
            data[wy0 - y0:wy1 - y0, wx0 - x0:wx1 - x0][w.data] = oid
        if self.pending is None or self.pending not in self.viewer.layers:
            self.pending = self.viewer.add_labels(data, name=f"{self.name} pending", translate=(y0, x0), opacity=0.7)
            self.pending.editable = False
            self.viewer.layers.selection.active = self.layer
        else:
            self.pending.data = data
            self.pending.translate = (y0, x0)
        n = len(self.regions)
        self.status.emit(f"{n} region{'s' if n != 1 else ''} pending · Accept saves")

    # ------------------------------------------------------------------ saving
    def accept(self):
        """Commit every pending region's window (human labels) through the store; returns the
        image's counts, or None when nothing was pending."""
        counts = None
        for r in [r for r in self.regions if r.window is not None and r.window.data.any()]:
            w = r.window
            ids = np.where(w.data, np.uint32(r.oid), np.uint32(0))
            counts = self.session.commit_window(self.name, ids, {r.oid: r.prompts.label}, offset=(w.y0, w.x0),
                                                where=w.data)
        self.regions = []
        self._drop_pending()
        if self.layer is not None:
            self.layer.refresh()
        return counts
