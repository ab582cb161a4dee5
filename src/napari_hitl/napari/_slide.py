"""Clicks, scribbles and extreme points on a large image (a whole slide) in the dock: the crop
around the prompts, never the image.

A large image shows as a multiscale Image layer and its saved objects as a multiscale Labels
layer that reads the project's chunks as napari asks for them (not editable with napari's
brush). The click, scribble and extreme-point tools work on it as on a plane: each region is a
new object of the dock's class, or corrects a saved object: a prompt on a saved object (a
positive one of the object's class, or a negative one) corrects it, and so does a prompt after
its id is picked as napari's selected label. A correction starts from the object's saved
pixels around the prompt (:meth:`napari_hitl.app.session.Session.object_seed`, read on the
dock's worker with the first answer) as its previous mask. The region's prompts go to the click
engine (``clicknet``, which reads only the crop around them,
:meth:`~napari_hitl.interactive.engine.Engine.predict_window`) on the dock's worker, and the
answer is shown in a small pending Labels layer placed over its window, the prompts in a Points
and a Shapes layer. A region takes only pixels no person labelled for another object
(:meth:`~napari_hitl.app.session.Session.claim`): the pending layer shows what *Accept* will
save. *Accept* commits each region's window through the store on the dock's worker
(:meth:`napari_hitl.app.session.Session.save_region`, which rewrites only the chunks it covers;
a correction replaces the object inside that window), reporting progress; back on the UI thread
the saved regions leave the pending layer and the saved layer re-reads them. While a region is
being saved, prompts on it or on its object and undoing its prompts are refused (saying so), so
what is saved is what the pending layer showed at *Accept*; other regions can be prompted.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_hitl.errors import HitlError, InputError
from napari_hitl.interactive.engine import Window
from napari_hitl.napari._session import extreme_from_clicks
from napari_hitl.napari._tools import COLORS, _is_negative
from napari_hitl.prompts import Click, RegionPrompts, Scribble

#: the click engine on a large image: the one that reads only the crop around the prompts
SLIDE_ENGINE = "clicknet"
#: the tools that work on a large image
SLIDE_MODES = ("off", "click", "scribble", "extreme")


@dataclass
class SlideRegion:
    """One object being made (or corrected) on a large image: its object id, its prompts (with
    its class), the engine's last answer (a boolean window, as much of it as the object may
    take) and, for a correction of a saved object, that object's saved pixels it starts from
    (``seed``, read on the worker with the first answer, around image pixel ``near``)."""

    oid: int
    prompts: RegionPrompts
    window: Window | None = None
    seed: Window | None = None
    near: tuple[float, float] | None = None

    @property
    def corrects(self) -> bool:
        return self.seed is not None or self.near is not None

    def holds(self, y: float, x: float) -> bool:
        """Whether the region's answer holds image pixel (y, x)."""
        if self.window is None:
            return False
        iy, ix = int(round(y)) - self.window.y0, int(round(x)) - self.window.x0
        h, w = self.window.data.shape
        return 0 <= iy < h and 0 <= ix < w and bool(self.window.data[iy, ix])


class SlideTools(QObject):
    """The prompt tools on a large image (see the module docstring); tells the dock through signals."""

    status = Signal(str)
    failed = Signal(object)
    #: emitted with the image's counts after an Accept's regions are saved (None: nothing changed)
    saved = Signal(object)

    #: seconds :meth:`wait_saved` waits for the saves in flight
    SAVE_WAIT_S = 120.0

    def __init__(self, viewer, queue, host):
        super().__init__()
        self.viewer, self.queue, self.host = viewer, queue, host
        self.session = None
        self.name: str | None = None
        self.image = None  # the LazyImage (this tool's own; closed on detach)
        self.layer = None  # the saved objects (multiscale, read lazily)
        self.pending = None  # the regions' answers, over their windows
        self._pending_idle = False  # pending emptied and hidden by show(), for the next regions
        self.points_layer = None  # clicks and extreme points
        self.shapes_layer = None  # scribbles
        self.regions: list[SlideRegion] = []
        self.history: list[tuple[str, SlideRegion | None]] = []  # (kind, region), newest last, for undo
        self.pending_extreme: list[tuple[float, float]] = []
        self.selected = 0  # a saved object picked as napari's selected label: the next prompt corrects it
        self.new_region = False
        self.mode = lambda: "click"
        self.cls = lambda: 1
        self._last_drag_draw = 0.0
        self._epoch = 0  # one per attach: the engine prepares again for each opened image
        self.saving: list[SlideRegion] = []  # regions an Accept is saving on the worker
        self._save_done: list[threading.Event] = []  # set when each Accept's saving ends

    @property
    def active(self) -> bool:
        return self.layer is not None

    def attach(self, session, name: str, labels_layer, image) -> None:
        self.detach()
        self.session, self.name, self.layer, self.image = session, name, labels_layer, image
        labels_layer.editable = False  # a lazily read layer: edits go through the store
        labels_layer.mouse_drag_callbacks.append(self._on_drag)
        labels_layer.events.selected_label.connect(self._on_selected)
        self._epoch += 1
        key, host = self._key(), self.host
        self.queue.submit("prepare", lambda ctx: host.get(SLIDE_ENGINE, key, image), channel="prepare",
                          interactive=True)

    def _key(self) -> tuple:
        """The engine host's key of the image this tool works on (another image object, even of the
        same name, is prepared again: the closed one is never read)."""
        return self.name, 0, self._epoch

    def detach(self) -> None:
        """Unbind from the layers, drop the pending regions and prompt layers, and close the image."""
        if self.layer is not None:
            if self._on_drag in self.layer.mouse_drag_callbacks:
                self.layer.mouse_drag_callbacks.remove(self._on_drag)
            self.layer.events.selected_label.disconnect(self._on_selected)
        self._drop_pending()
        for lay in (self.points_layer, self.shapes_layer):
            if lay is not None and lay in self.viewer.layers:
                self.viewer.layers.remove(lay)
        self.points_layer = self.shapes_layer = None
        if self.image is not None:
            self.image.close()  # an engine still holding it prepares again (a new key) before reading it
        self.regions, self.history, self.pending_extreme, self.selected = [], [], [], 0
        self.saving = []  # a save in flight goes on; its answer finds another epoch
        self.layer, self.session, self.name, self.image = None, None, None, None

    def _drop_pending(self) -> None:
        if self.pending is not None and self.pending in self.viewer.layers:
            self.viewer.layers.remove(self.pending)
        self.pending = None

    # ------------------------------------------------------------------ prompts
    def _on_selected(self, event=None) -> None:
        """napari's selected label picks a saved object: the next prompt corrects it."""
        if self.layer is None:
            return
        oid = int(self.layer.selected_label)
        if not oid or any(r.oid == oid for r in self.regions):
            return
        row = self.session.project.object(self.name, oid)
        if row is None:
            return
        self.selected = oid
        self.status.emit(f"Object {oid} picked: the next click or scribble corrects it")

    def _on_drag(self, layer, event):
        """napari drag callback: clicks and extreme points on press, scribbles on press-move-release."""
        mode = self.mode()
        if mode == "off":
            return
        if mode not in SLIDE_MODES:
            self.failed.emit(InputError(f"On a large image the click, scribble and extreme-point tools work (not "
                                        f"{mode}): press C, W or Shift+E."))
            return
        negative = _is_negative(event)
        y, x = self._data_yx(layer, event)
        if mode != "scribble":
            self._guard(self.click if mode == "click" else self.extreme_point, y, x,
                        *(() if mode == "extreme" else (not negative,)))
            return
        points = [(y, x)]
        yield
        while event.type == "mouse_move":
            yx = self._data_yx(layer, event)
            if yx != points[-1]:
                points.append(yx)
                now = time.perf_counter()
                if now - self._last_drag_draw > 0.05:
                    self._last_drag_draw = now
                    self._draw_prompts(live=(points, not negative))
            yield
        self._guard(self.scribble, points, not negative)

    @staticmethod
    def _data_yx(layer, event) -> tuple[float, float]:
        pos = np.asarray(layer.world_to_data(event.position), np.float64)
        return float(pos[-2]), float(pos[-1])

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except HitlError as err:
            self.failed.emit(err)

    def _inside(self, y: float, x: float) -> bool:
        h, w = self.image.shape[:2]
        return -0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5

    def _new(self, cls: int) -> SlideRegion:
        r = SlideRegion(self.session.reserve_id(self.name), RegionPrompts(int(cls)))
        self.regions.append(r)
        self.new_region = False
        return r

    def _in_flight(self, r: SlideRegion | None) -> bool:
        return r is not None and any(s is r for s in self.saving)

    def _refuse_saving(self, oid: int) -> None:
        if any(s.oid == oid for s in self.saving):
            raise InputError(f"Object {oid} is being saved: prompt it again in a moment.")

    def _correction(self, oid: int, near: tuple[float, float]) -> SlideRegion:
        """The region correcting saved object ``oid`` (a new one starts from its saved pixels
        around ``near``, read on the worker with its first answer: see :meth:`predict`)."""
        self._refuse_saving(oid)
        r = next((r for r in self.regions if r.oid == oid), None)
        if r is None:
            row = self.session.project.object(self.name, oid)
            if row is None:
                raise InputError(f"{self.name!r} has no saved object {oid}")
            r = SlideRegion(oid, RegionPrompts(int(row["class"])), near=(float(near[0]), float(near[1])))
            self.regions.append(r)
            self.new_region = False
        return r

    def _target(self, y: float, x: float, positive: bool) -> SlideRegion | None:
        """Which region a prompt at (y, x) goes to, as on a plane: the pending region whose answer
        holds it (a positive prompt of another class starts a new one instead); the saved object
        picked as the selected label; a saved object under it (a positive prompt: of the dock's
        class; a negative one: any); the newest region (a positive prompt: of the dock's class);
        else a new object of the dock's class (a negative prompt: none). A region being saved
        takes no prompt (refused, saying so) and is never the newest region."""
        cls = int(self.cls())
        hit = next((r for r in reversed(self.regions) if r.holds(y, x)), None)
        if hit is not None and (not positive or hit.prompts.label == cls):
            self._refuse_saving(hit.oid)
            return hit
        if self.selected:
            oid, self.selected = self.selected, 0
            return self._correction(oid, (y, x))
        if not self.new_region:
            own, own_cls = self.session.saved_object_at(self.name, y, x)
            if own and (not positive or own_cls == cls):
                return self._correction(own, (y, x))
        last = next((r for r in reversed(self.regions) if not self._in_flight(r)), None)
        if last is not None and not self.new_region and (not positive or last.prompts.label == cls):
            return last
        return self._new(cls) if positive else None

    def _need_image(self) -> None:
        if self.layer is None:
            raise InputError("Open a large image first.")

    def _added(self, kind: str, r: SlideRegion) -> None:
        self.regions.remove(r)
        self.regions.append(r)  # the newest region gets the next prompt
        self.history.append((kind, r))
        self._draw_prompts()
        self.predict(r)

    def click(self, y: float, x: float, positive: bool = True) -> None:
        """A click at image pixel (y, x): positive adds to the region it goes to (see
        :meth:`_target`), negative removes."""
        self._need_image()
        if not self._inside(y, x):
            return
        r = self._target(y, x, positive)
        if r is None:
            self.status.emit("A negative click needs a region: click positive on the object first.")
            return
        r.prompts.clicks.append(Click(float(y), float(x), bool(positive)))
        self._added("click", r)

    def scribble(self, points, positive: bool = True) -> None:
        """A scribble through image points (y, x); the region is decided where it starts."""
        self._need_image()
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return
        h, w = self.image.shape[:2]
        pts = np.stack([np.clip(pts[:, 0], 0, h - 1), np.clip(pts[:, 1], 0, w - 1)], 1)
        r = self._target(pts[0, 0], pts[0, 1], positive)
        if r is None:
            self.status.emit("A negative scribble needs a region: click positive on the object first.")
            self._draw_prompts()
            return
        r.prompts.scribbles.append(Scribble(pts, bool(positive)))
        self._added("scribble", r)

    def extreme_point(self, y: float, x: float) -> None:
        """One of four extreme points (any order); the fourth makes a new object of the dock's class."""
        self._need_image()
        if not self._inside(y, x):
            return
        self.pending_extreme.append((float(y), float(x)))
        if len(self.pending_extreme) < 4:
            self.history.append(("extreme_point", None))
            self._draw_prompts()
            self.status.emit(f"Extreme point {len(self.pending_extreme)} of 4 (left, right, top, bottom in any order)")
            return
        points, self.pending_extreme = self.pending_extreme, []
        self.history = [h for h in self.history if h[0] != "extreme_point"]
        extreme = extreme_from_clicks(points)
        try:
            extreme.validate(self.image.shape[:2])
        except InputError:
            self._draw_prompts()
            raise
        r = self._new(int(self.cls()))
        r.prompts.extreme = extreme
        self._added("extreme", r)

    def undo(self) -> None:
        """Take the last prompt back (a new object left without a positive prompt, or a correction
        left without prompts, is dropped)."""
        if not self.history:
            self.status.emit("No prompt to undo.")
            return
        if self._in_flight(self.history[-1][1]):
            self.status.emit(f"Object {self.history[-1][1].oid} is being saved: its prompts stay.")
            return
        kind, r = self.history.pop()
        if kind == "extreme_point":
            if self.pending_extreme:
                self.pending_extreme.pop()
            self._draw_prompts()
            return
        p = r.prompts
        if kind == "click" and p.clicks:
            p.clicks.pop()
        elif kind == "scribble" and p.scribbles:
            p.scribbles.pop()
        elif kind == "extreme":
            p.extreme = None
        empty = not (p.clicks or p.scribbles or p.extreme is not None)
        if empty or (not p.has_positive and not r.corrects):
            self.regions.remove(r)
            self.history = [h for h in self.history if h[1] is not r]
            self._draw_prompts()
            self.show()
            return
        self._draw_prompts()
        self.predict(r)

    def reset(self) -> None:
        """Forget every pending region and prompt (nothing was saved); regions being saved stay
        until they are."""
        self.regions = [r for r in self.regions if self._in_flight(r)]
        self.history = [h for h in self.history if self._in_flight(h[1])]
        self.pending_extreme, self.selected = [], 0
        self.show()
        self._draw_prompts()
        self.status.emit("Prompts cleared" + (" (the regions being saved stay until they are)" if self.regions else ""))

    def predict(self, r: SlideRegion) -> None:
        """Run the click engine on the region's crop on the worker; the newest answer, as much of
        it as the object may take (:meth:`~napari_hitl.app.session.Session.claim`), is shown."""
        prompts, window, seed, near = copy.deepcopy(r.prompts), r.window, r.seed, r.near
        key, image, host, session, name, oid = self._key(), self.image, self.host, self.session, self.name, r.oid

        def fn(ctx):
            nonlocal seed
            if seed is None and near is not None:  # a correction's saved pixels: a read of the store
                seed = session.object_seed(name, oid, near)
            engine = host.get(SLIDE_ENGINE, key, image)
            win = engine.predict_window(prompts, prev_mask=window if window is not None else seed)
            return seed, session.claim(name, oid, Window(np.asarray(win.data) > 0, win.y0, win.x0))

        def done(answer):
            if r in self.regions and self.layer is not None and not self._in_flight(r):
                r.seed = r.seed if r.seed is not None else answer[0]
                r.window = answer[1]
                self.show()

        self.status.emit("Segmenting…")
        self.queue.submit("predict", fn, done, channel="predict", interactive=True)

    def show(self) -> None:
        """The pending regions in a Labels layer over the box their windows span; with none, the
        layer stays, empty and hidden, for the next ones (a removed layer costs napari a full
        garbage collection on the UI thread)."""
        wins = [(r.oid, r.window) for r in self.regions if r.window is not None]
        if not wins:
            if self.pending is not None and self.pending in self.viewer.layers and not self._pending_idle:
                self.pending.data = np.zeros((1, 1), np.uint32)  # also when the person hid it: nothing stale
                self.pending.visible = False
                self._pending_idle = True
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
            if self._pending_idle:  # shown again for new regions; while they last, the person's eye toggle holds
                self.pending.visible = True
        self._pending_idle = False
        n = len(self.regions)
        fixing = sum(r.corrects for r in self.regions)
        more = f" ({fixing} correcting saved objects)" if fixing else ""
        self.status.emit(f"{n} region{'s' if n != 1 else ''} pending{more} · Accept saves")

    # ------------------------------------------------------------------ prompt layers
    def _draw_prompts(self, live=None) -> None:
        """Every pending prompt in the Points (clicks, extreme points) and Shapes (scribbles) layers."""
        if self.layer is None:
            return
        pts, colors, sizes, paths, edges = [], [], [], [], []
        for r in self.regions:
            for c in r.prompts.clicks:
                pts.append((c.y, c.x))
                colors.append(COLORS["positive" if c.positive else "negative"])
            if r.prompts.extreme is not None:
                pts += [tuple(p) for p in r.prompts.extreme.points]
                colors += [COLORS["extreme"]] * 4
            for sc in r.prompts.scribbles:
                paths.append(np.asarray(sc.points, np.float64))
                edges.append(COLORS["positive" if sc.positive else "negative"])
        pts += self.pending_extreme
        colors += [COLORS["pending"]] * len(self.pending_extreme)
        sizes = [9.0] * len(pts)
        if live is not None:  # the scribble being drawn, as small dots
            points, positive = live
            pts += list(points)
            colors += [COLORS["positive" if positive else "negative"]] * len(points)
            sizes += [3.0] * len(points)
        if not pts and not paths and self.points_layer is None:
            return
        viewer = self.viewer
        if self.points_layer is None or self.points_layer not in viewer.layers:
            self.points_layer = viewer.add_points(np.zeros((0, 2)), name=f"{self.name} prompts", size=9,
                                                  border_color="white", border_width=0.15)
            self.shapes_layer = viewer.add_shapes(name=f"{self.name} scribbles", ndim=2, edge_width=2,
                                                  face_color="transparent")
            for lay in (self.points_layer, self.shapes_layer):
                lay.editable = False
                lay.metadata["hitl_prompts"] = True
            viewer.layers.selection.active = self.layer
        with self.points_layer.events.blocker_all():
            self.points_layer.data = np.array(pts, np.float64).reshape(-1, 2)
            if pts:
                self.points_layer.face_color = np.array(colors)
                self.points_layer.size = np.array(sizes)
        self.points_layer.refresh()
        self.shapes_layer.data = []
        if paths:
            self.shapes_layer.add_paths(paths, edge_color=np.array(edges), edge_width=2)

    # ------------------------------------------------------------------ saving
    def accept(self) -> int:
        """Save every answered pending region's window (human labels) through the store on the
        dock's worker, as shown now; returns how many regions go (0: nothing to save). Progress
        and the result come as ``status``; ``saved`` brings the counts. Until they are saved,
        prompts on those regions and undoing their prompts are refused; if saving fails the
        regions not saved stay pending."""
        self._need_image()
        # newest first: where answers overlap, the pending layer shows the newest region's (it
        # is drawn last), and the first commit's human pixels are kept from the later ones
        todo = [r for r in reversed(self.regions) if r.window is not None and not self._in_flight(r)]
        if not todo:
            self.status.emit("Nothing to save: click an object first" if not self.saving else "Saving…")
            return 0
        work = [(r.oid, r.prompts.label, r.window) for r in todo]
        session, name, epoch = self.session, self.name, self._epoch
        results: list = []  # the counts of each region saved, in order (filled on the worker)
        ended = threading.Event()

        def fn(ctx):
            try:
                for k, (oid, cls, window) in enumerate(work):
                    results.append(session.save_region(name, oid, cls, window))
                    ctx.progress(k + 1, len(work))
            finally:
                ended.set()
            return results

        def progress(k, n):
            if epoch == self._epoch and k < n:
                self.status.emit(f"Saving {name}: {k} of {n} regions…")

        self.saving.extend(todo)
        self._save_done = [e for e in self._save_done if not e.is_set()] + [ended]
        self.selected = 0
        self.status.emit(f"Saving {name}: {len(todo)} region{'s' if len(todo) != 1 else ''}…")
        self.queue.submit("save", fn, lambda _: self._saved(todo, results, session, name, epoch),
                          on_error=lambda err: self._saved(todo, results, session, name, epoch, err),
                          on_progress=progress, interactive=True)
        return len(todo)

    def _saved(self, todo: list[SlideRegion], results: list, session, name: str, epoch: int, error=None) -> None:
        """UI thread, after an Accept's saving ended: listeners hear of each saved region, and
        the saved regions leave the pending layer (those not saved, after an error, stay)."""
        # the session still open (the tool itself may show another image now, or none: an
        # ordinary image detaches it, yet the save counts and the dock's listeners hear of it)
        if not getattr(session, "closed", False):
            for counts in results:
                if counts is not None:
                    session.region_saved(name, counts)
        if epoch != self._epoch:  # another image is shown now
            return
        done = todo[:len(results)]
        self.saving = [r for r in self.saving if not any(r is t for t in todo)]
        self.regions = [r for r in self.regions if not any(r is d for d in done)]
        self.history = [h for h in self.history if not any(h[1] is d for d in done)]
        self.show()
        self._draw_prompts()
        if self.layer is not None:
            self.layer.refresh()
        counts = next((c for c in reversed(results) if c is not None), None)
        if error is not None:
            self.status.emit(f"⚠ {len(todo) - len(done)} region(s) of {name} not saved (still pending): {error}")
        elif counts is not None:
            self.status.emit(f"Saved {name}: {counts.human} human pixels")
        else:
            self.status.emit("Nothing to save: click an object first")
        self.saved.emit(counts)

    def wait_saved(self) -> bool:
        """Block until the saves in flight end (before the project closes, or the queue is
        cancelled: a queued save must run); False if one is still running after SAVE_WAIT_S."""
        deadline = time.monotonic() + self.SAVE_WAIT_S
        for ended in self._save_done:
            if not ended.wait(max(0.0, deadline - time.monotonic())):
                return False
        self._save_done = []
        return True
