"""Click, scribble and extreme-point tools on the dock's Labels layer, and the prompt layers.

The Labels layer shows objects: one id per object (napari's colours), a class per id in
``layer.metadata['hitl_classes']``. A new region is a new object of the dock's class; a prompt
on an object the image already had corrects that object. Left click (or drag, for
scribbles) is positive, right click or Ctrl+click negative. Every prompt is shown at once in a Points layer (green positive, magenta
negative, yellow extreme points, orange while an extreme-point quadruple is incomplete) and a
Shapes layer (scribbles), then the engine runs on the dock's worker queue and the newest
answer is painted into the Labels layer through napari's own history (Ctrl+Z undoes it).
The controller tells the dock what happened with signals; it never calls the dock.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_hitl.errors import HitlError, InputError
from napari_hitl.instances import ids_of
from napari_hitl.interactive.engine import DEFAULT_ENGINE
from napari_hitl.napari._layers import META_CLASSES
from napari_hitl.napari._session import PromptSession, predict_regions

#: tool modes; "off" leaves the Labels layer to napari's own tools
MODES = ("off", "click", "scribble", "extreme", "suggest", "split")
MODE_TITLES = {"off": "Off (napari tools)", "click": "Click", "scribble": "Scribble",
               "extreme": "Extreme points", "suggest": "Suggestions", "split": "Split object"}

#: keyboard shortcuts on the Labels layer (napari's own: P paint, E erase, F fill, Z pan/zoom,
#: [ ] brush size, B preserve labels, M new label, Ctrl+Z / Ctrl+Shift+Z undo / redo of label
#: edits). Scribble is W (write a stroke), not S: S means "segment" in micro-sam, which many of
#: our users also have.
SHORTCUTS = {
    "C": ("click tool", "click"),
    "W": ("scribble tool (write a stroke)", "scribble"),
    "Shift-E": ("extreme-point tool", "extreme"),
    "G": ("superpixel suggestions tool", "suggest"),
    "N": ("next prompt starts a new region", "new_region"),
    "Backspace": ("undo the last prompt", "undo"),
    "R": ("reset the prompts of this image", "reset"),
    "Control-Enter": ("accept the labels (saved as human labels)", "accept"),
    "Shift-N": ("next image", "next"),
}

COLORS = {"positive": (0.2, 0.9, 0.2, 1.0), "negative": (1.0, 0.2, 0.8, 1.0),
          "extreme": (1.0, 0.9, 0.1, 1.0), "pending": (1.0, 0.55, 0.0, 1.0)}


def shortcut_help() -> str:
    """One line per shortcut, for the dock's tooltip."""
    rows = [f"{key.replace('-', '+')}: {what}" for key, (what, _) in SHORTCUTS.items()]
    rows += ["Left click / drag: positive; right click or Ctrl: negative",
             "napari keys still work: P paint, E erase, F fill, Z pan/zoom, [ ] brush size, Ctrl+Z undo"]
    return "\n".join(rows)


class EngineHost:
    """The interactive engines, created and prepared on the worker thread only.

    An engine is prepared again when the (image, frame) key changes, or after :meth:`forget`
    (another project opened: its images may share names with the last one's)."""

    def __init__(self):
        self._engines: dict = {}
        self._keys: dict = {}
        self._epoch = 0

    def forget(self) -> None:
        """Every engine prepares again on its next use (called on the UI thread when the project
        changes; a preparation running meanwhile on the worker is tagged with the old epoch)."""
        self._epoch += 1

    def get(self, name: str, key, image: np.ndarray):
        from napari_hitl.interactive.engine import get_engine

        engine = self._engines.get(name)
        if engine is None:
            engine = self._engines[name] = get_engine(name)
        tagged = (self._epoch, key)
        if self._keys.get(name) != tagged:
            self._keys[name] = None
            engine.prepare(image)
            self._keys[name] = tagged
        return engine

    def device(self, name: str) -> str:
        engine = self._engines.get(name)
        return getattr(engine, "device_name", "CPU") if engine is not None else ""


def _is_negative(event) -> bool:
    mods = {str(getattr(m, "name", m)).lower() for m in (getattr(event, "modifiers", ()) or ())}
    return getattr(event, "button", 1) == 2 or "control" in mods or "meta" in mods


class ToolController(QObject):
    """The interactive tools on one viewer's Labels layer, run on ``queue`` (see the module docstring)."""

    #: a line of status for the person
    status = Signal(str)
    #: the tool mode changed (also when the person picks one of napari's own label tools)
    mode_changed = Signal(str)
    #: a keyboard shortcut asks for a named action (see SHORTCUTS)
    action_requested = Signal(str)
    #: the engine is prepared for the shown plane, on this device
    engine_ready = Signal(str)
    #: a click in suggestion mode: frame, y, x, positive
    suggestion_clicked = Signal(int, float, float, bool)
    #: a prompt failed with an error the person can fix (a HitlError)
    failed = Signal(object)
    #: split mode: frame, (N, 2) points and 'line' (a stroke across the object) or 'seeds' (two clicks)
    split_asked = Signal(int, object, str)

    def __init__(self, viewer, queue):
        super().__init__()
        self.viewer = viewer
        self.queue = queue
        self.image: str | None = None  # name of the shown image
        self.image_layer = None
        self.mode = "off"
        self.engine_name = DEFAULT_ENGINE
        self.full_image = True
        self.cls = 1  # the class new objects get (the dock's class selector)
        self.id_source = None  # a callable giving new object ids of the shown image (the dock's session)
        self.split_points: list = []  # split mode: the first of two clicks
        self.host = EngineHost()
        self.sessions: dict[tuple[str, int], PromptSession] = {}
        self.layer = None
        self.points_layer = None
        self.shapes_layer = None
        self.last_latency: float | None = None  # engine answer -> mask painted, seconds
        self.latencies: list[float] = []
        self._last_drag_draw = 0.0
        self.signs: list[str] = []
        self._drawn_points = None
        self._drawn_paths: list = []

    # ------------------------------------------------------------------ layers
    def attach(self, labels_layer, image_layer, image: str) -> None:
        """Bind the tools to the shown layers of image ``image`` (the prompt layers come with the
        first prompt, or are the kept ones, emptied, of the last image)."""
        self.detach(keep_layers=True)
        self.layer, self.image_layer, self.image = labels_layer, image_layer, image
        if not self._name_kept_layers():  # kept ones that cannot serve here (misplaced, another
            self._remove_prompt_layers()  # project's): not left named for the last image
        labels_layer.mouse_drag_callbacks.append(self._on_drag)
        labels_layer.events.mode.connect(self._on_layer_mode)
        for key, (_, action) in SHORTCUTS.items():
            labels_layer.bind_key(key, self._key_handler(action), overwrite=True)
        self.viewer.layers.selection.active = labels_layer
        self.set_mode(self.mode)
        self.prepare()

    def _ensure_prompt_layers(self) -> None:
        """Have the Points (clicks, extreme points) and Shapes (scribbles) layers, named for the
        image: added on the first prompt, then kept from image to image (see :meth:`detach`)."""
        if self._name_kept_layers():
            return
        viewer = self.viewer
        self._remove_prompt_layers()  # what is left of a pair one of which the person deleted, or misplaced
        ndim = self.layer.ndim
        name = self.layer.name.replace(" labels", "")
        self.points_layer = viewer.add_points(np.zeros((0, ndim)), name=f"{name} prompts", size=9,
                                              border_color="white", border_width=0.15, face_color="green",
                                              ndim=ndim)
        self.shapes_layer = viewer.add_shapes(name=f"{name} scribbles", ndim=ndim, edge_width=2,
                                              edge_color="green", face_color="transparent")
        for lay in (self.points_layer, self.shapes_layer):
            lay.editable = False
            lay.metadata["hitl_prompts"] = True
        viewer.layers.selection.active = self.layer

    def _name_kept_layers(self) -> bool:
        """Name the kept prompt layers for the image; False if there is no usable pair (both in the
        viewer, above the labels layer, of its dimensions)."""
        layers, pair = self.viewer.layers, (self.points_layer, self.shapes_layer)
        if self.layer is None or self.layer not in layers or any(lay is None or lay not in layers for lay in pair):
            return False
        at = layers.index(self.layer)
        if any(lay.ndim != self.layer.ndim or layers.index(lay) < at for lay in pair):
            return False
        name = self.layer.name.replace(" labels", "")
        self.points_layer.name, self.shapes_layer.name = f"{name} prompts", f"{name} scribbles"
        return True

    def detach(self, keep_layers: bool = False) -> None:
        """Unbind from the labels layer. The prompt layers are emptied and kept for the next image
        when ``keep_layers`` (a removed layer costs napari a full garbage collection on the UI
        thread, see :func:`~napari_hitl.napari._layers.refill_layers`), else removed."""
        viewer = self.viewer
        if self.layer is not None:
            if self._on_drag in self.layer.mouse_drag_callbacks:
                self.layer.mouse_drag_callbacks.remove(self._on_drag)
            self.layer.events.mode.disconnect(self._on_layer_mode)
        kept = [lay for lay in (self.points_layer, self.shapes_layer) if lay is not None and lay in viewer.layers]
        if keep_layers:
            for lay in kept:
                if len(lay.data):  # (setting data costs napari ~20 ms a layer, even when empty)
                    lay.data = np.zeros((0, lay.ndim)) if lay is self.points_layer else []
        else:
            self._remove_prompt_layers()
        self.layer = None
        self._drawn_points, self._drawn_paths = None, []

    def _remove_prompt_layers(self) -> None:
        for lay in (self.points_layer, self.shapes_layer):
            if lay is not None and lay in self.viewer.layers:
                self.viewer.layers.remove(lay)
        self.points_layer = self.shapes_layer = None

    def forget_image(self, name: str) -> None:
        for key in [k for k in self.sessions if k[0] == name]:
            del self.sessions[key]

    # ------------------------------------------------------------------ state
    def set_mode(self, mode: str) -> None:
        """Switch tool; any tool puts napari's Labels layer in pan/zoom without mouse panning."""
        if mode not in MODES:
            raise InputError(f"unknown tool {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        self.split_points = []
        if self.layer is not None and mode != "off":
            self.layer.mode = "pan_zoom"
            self.layer.mouse_pan = False
            self.viewer.layers.selection.active = self.layer
        elif self.layer is not None:
            self.layer.mouse_pan = self.layer.mode == "pan_zoom"
        self.mode_changed.emit(mode)

    def _on_layer_mode(self, event=None) -> None:
        if self.layer is not None and self.layer.mode != "pan_zoom" and self.mode != "off":
            self.mode = "off"  # the person picked a napari tool (paint, erase...): ours step aside
            self.mode_changed.emit("off")

    def _key_handler(self, action: str):
        def handler(layer):
            self.action_requested.emit(action)
        handler.__doc__ = action
        return handler

    def frame(self) -> int:
        """Current time point of a time-lapse (0 for a single image)."""
        if self.layer is None or self.layer.ndim < 3:
            return 0
        return int(self.viewer.dims.current_step[0])

    def session(self, frame: int | None = None) -> PromptSession | None:
        """The prompt session of the shown image at ``frame`` (created on first use)."""
        if self.layer is None or self.image is None:
            return None
        t = self.frame() if frame is None else frame
        key = (self.image, t)
        if key not in self.sessions:
            self.sessions[key] = PromptSession(self.plane(t), classes=self.layer_classes(), id_source=self.id_source)
        return self.sessions[key]

    def layer_classes(self) -> dict[int, int]:
        """The class of each object id the layer was loaded with (and saved since)."""
        return dict(self.layer.metadata.get(META_CLASSES, {})) if self.layer is not None else {}

    def object_classes(self, frame: int | None = None) -> dict[int, int]:
        """The class of every object id in the shown plane: saved objects, regions, and ids
        painted by hand with napari's brush (those take the dock's class)."""
        t = self.frame() if frame is None else frame
        classes = self.known_classes(t)
        return {i: classes.get(i, self.cls) for i in ids_of(self.plane(t)).tolist()}

    def known_classes(self, frame: int | None = None) -> dict[int, int]:
        """The classes the layer and the prompts know (no scan of the pixels: cheap)."""
        t = self.frame() if frame is None else frame
        s = self.sessions.get((self.image, t))
        return {**self.layer_classes(), **(s.object_classes() if s is not None else {})}

    def pin_classes(self, frame: int | None = None) -> None:
        """Give ids painted with napari's brush, which have no class yet, the current class for
        good (before the class changes)."""
        if self.layer is None:
            return
        t = self.frame() if frame is None else frame
        known = self.known_classes(t)
        new = {i: int(self.cls) for i in ids_of(self.plane(t)).tolist() if i not in known}
        if new:
            self.layer.metadata[META_CLASSES] = {**self.layer_classes(), **new}

    def plane(self, t: int) -> np.ndarray:
        data = np.asarray(self.layer.data)
        return data[t] if data.ndim == 3 else data

    def _image_plane(self, t: int) -> np.ndarray:
        img = np.asarray(self.image_layer.data)
        stack = self.layer.ndim == 3
        return img[t] if stack else img

    def label(self) -> int:
        """The class of new regions."""
        return max(int(self.cls), 1)

    # ------------------------------------------------------------------ mouse
    def _data_yx(self, event) -> tuple[int, float, float]:
        pos = np.asarray(self.layer.world_to_data(event.position), np.float64)
        t = int(round(pos[0])) if self.layer.ndim == 3 else 0
        return t, float(pos[-2]), float(pos[-1])

    def _on_drag(self, layer, event):
        """napari drag callback: clicks on press, scribbles on press-move-release."""
        if self.mode == "off":
            return
        negative = _is_negative(event)
        t, y, x = self._data_yx(event)
        if self.mode not in ("scribble", "split"):
            self._guard(self._press, t, y, x, not negative)
            return
        points = [(y, x)]
        yield
        while event.type == "mouse_move":
            _, y, x = self._data_yx(event)
            if (y, x) != points[-1]:
                points.append((y, x))
                now = time.perf_counter()
                if now - self._last_drag_draw > 0.05:
                    self._last_drag_draw = now
                    self._draw_prompts(live=(t, points, not negative))
            yield
        if self.mode == "split":
            self._split_stroke(t, points)
            return
        self._guard(self.scribble, points, not negative, t)

    def _split_stroke(self, t: int, points: list) -> None:
        """Split mode: a stroke asks for a split along it; a click is one of two seeds."""
        if len(points) > 2:
            self.split_points = []
            self.split_asked.emit(t, np.asarray(points, np.float64), "line")
            return
        self.split_points.append(points[0])
        if len(self.split_points) < 2:
            self.status.emit("Split: click the second part of the object (or draw a stroke across it)")
            return
        seeds, self.split_points = self.split_points, []
        self.split_asked.emit(t, np.asarray(seeds, np.float64), "seeds")
    def _guard(self, fn, *args) -> None:
        """Run a prompt; an error the person can fix goes out as ``failed``."""
        try:
            fn(*args)
        except HitlError as err:
            self.failed.emit(err)

    def _press(self, t: int, y: float, x: float, positive: bool) -> None:
        if self.mode == "click":
            self.click(y, x, positive, t)
        elif self.mode == "extreme":
            self.extreme_point(y, x, t)
        elif self.mode == "suggest":
            self.suggestion_clicked.emit(t, y, x, positive)

    # ------------------------------------------------------------------ prompts
    def _inside(self, y: float, x: float) -> bool:
        s = self.session()
        h, w = s.shape
        return -0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5

    def click(self, y: float, x: float, positive: bool = True, frame: int | None = None) -> None:
        """A click at data pixel (y, x): positive adds to the region, negative removes."""
        s = self.session(frame)
        if s is None or not self._inside(y, x):
            return
        r = s.add_click(y, x, positive, self.label())
        if r is None:
            self.status.emit("A negative click needs a region: click positive on the object first.")
            return
        self._after_prompt(s, r, frame)

    def scribble(self, points, positive: bool = True, frame: int | None = None) -> None:
        """A scribble through data points (y, x); the region is the one where it starts."""
        s = self.session(frame)
        if s is None or len(points) == 0:
            return
        r = s.add_scribble(points, positive, self.label())
        if r is None:
            self.status.emit("A negative scribble needs a region: click positive on the object first.")
            self._draw_prompts()
            return
        self._after_prompt(s, r, frame)

    def extreme_point(self, y: float, x: float, frame: int | None = None) -> None:
        """One of four extreme points (any order); the fourth creates the region."""
        s = self.session(frame)
        if s is None or not self._inside(y, x):
            return
        try:
            r = s.add_extreme_point(y, x, self.label())
        except InputError:
            s.pending_extreme.clear()
            s.history = [h for h in s.history if h[0] != "extreme_point"]
            self._draw_prompts()
            raise
        if r is None:
            self.status.emit(f"Extreme point {len(s.pending_extreme)} of 4 (left, right, top, bottom in any order)")
            self._draw_prompts()
            return
        self._after_prompt(s, r, frame)

    def new_region(self) -> None:
        s = self.session()
        if s is not None:
            s.new_region = True
            self.status.emit("The next positive prompt starts a new region.")

    def undo(self) -> None:
        """Undo the last prompt of the shown plane and re-predict."""
        s = self.session()
        if s is None or not s.history:
            self.status.emit("No prompt to undo.")
            return
        r = s.undo()
        self._draw_prompts()
        if r is not None or (self.full_image and s.regions):
            self.predict(s, r)
        else:
            self.show(s)

    def reset(self) -> None:
        """Forget the prompts of the shown plane; its labels go back to how they were."""
        s = self.session()
        if s is None:
            return
        s.absorb(self.plane(self.frame()))
        s.reset()
        self._draw_prompts()
        self.show(s)
        self.status.emit("Prompts reset.")

    def committed(self, classes: dict[int, int] | None = None) -> None:
        """After an accept: what is shown becomes the starting point (``classes``: the saved
        class of each object), prompts are cleared."""
        if classes is not None and self.layer is not None:
            self.layer.metadata[META_CLASSES] = {**self.layer_classes(), **classes}
        for (name, t), s in self.sessions.items():
            if name == self.image:
                s.commit(self.plane(t), {**self.layer_classes(), **s.object_classes()})
        self._draw_prompts()

    def _after_prompt(self, s: PromptSession, r, frame) -> None:
        self._draw_prompts()
        if self.layer is not None and r is not None and r.oid:
            self.layer.selected_label = int(r.oid)  # napari's brush continues this object
        self.predict(s, r, frame)

    # ------------------------------------------------------------------ prediction
    def prepare(self) -> None:
        """Prepare the engine for the shown plane in the background, so the first click is quick."""
        if self.layer is None or self.image_layer is None:
            return
        t = self.frame()
        key, image, name = (self.image, t), self._image_plane(t), self.engine_name

        def fn(ctx):
            self.host.get(name, key, image)
            return self.host.device(name)

        self.queue.submit("prepare", fn, self.engine_ready.emit, channel="prepare", interactive=True)

    def predict(self, s: PromptSession, target=None, frame: int | None = None) -> None:
        """Queue the engine on the session's regions; only the newest answer is painted."""
        t = self.frame() if frame is None else frame
        snap = s.snapshot(target)
        key, image = (self.image, t), self._image_plane(t)
        name, full = self.engine_name, self.full_image

        def fn(ctx):
            engine = self.host.get(name, key, image)
            return predict_regions(engine, snap, full)

        def done(masks):
            if self.sessions.get(key) is s and self.image == key[0]:
                s.set_masks(masks)
                self.show(s, t)

        self.status.emit("Segmenting…")
        self.queue.submit("predict", fn, done, channel="predict", interactive=True)

    def show(self, s: PromptSession, frame: int | None = None) -> None:
        """Paint the session's composite into the Labels layer (napari history: Ctrl+Z undoes)."""
        if self.layer is None:
            return
        t = self.frame() if frame is None else frame
        current = self.plane(t)
        s.absorb(current)
        new = s.composite()
        changed = np.nonzero(new != current)
        if changed[0].size:
            idx = changed if self.layer.ndim == 2 else (np.full_like(changed[0], t), *changed)
            with self.layer.block_history():
                self.layer.data_setitem(idx, new[changed].astype(self.layer.data.dtype))
        s.shown = new
        job = self.queue.delivering
        if job is not None and job.answered is not None:
            self.last_latency = time.perf_counter() - job.answered
            self.latencies.append(self.last_latency)
        n = len(s.regions)
        self.status.emit(f"{n} region{'s' if n != 1 else ''} · {len(s.history)} prompt{'s' if len(s.history) != 1 else ''}"
                      " · Backspace undoes, Accept saves")

    # ------------------------------------------------------------------ prompt layers
    def _draw_prompts(self, live=None) -> None:
        """Show every prompt of the shown image (all frames) in the Points and Shapes layers."""
        if self.layer is None:
            return
        stack = self.layer.ndim == 3
        pts, colors, symbols, paths, edges = [], [], [], [], []

        def at(t, y, x):
            return [t, y, x] if stack else [y, x]

        for (name, t), s in self.sessions.items():
            if name != self.image:
                continue
            for r in s.regions:
                for c in r.prompts.clicks:
                    pts.append(at(t, c.y, c.x))
                    colors.append(COLORS["positive" if c.positive else "negative"])
                    symbols.append("disc")
                if r.prompts.extreme is not None:
                    for y, x in r.prompts.extreme.points:
                        pts.append(at(t, y, x))
                        colors.append(COLORS["extreme"])
                        symbols.append("diamond")
                for sc in r.prompts.scribbles:
                    paths.append(np.array([at(t, y, x) for y, x in sc.points]))
                    edges.append(COLORS["positive" if sc.positive else "negative"])
            for y, x in s.pending_extreme:
                pts.append(at(t, y, x))
                colors.append(COLORS["pending"])
                symbols.append("diamond")
        sizes = [9.0] * len(pts)
        self.signs = [{v: k for k, v in COLORS.items()}[c] for c in colors]
        if live is not None:  # the scribble being drawn: its vertices as small dots (cheap to update)
            t, points, positive = live
            pts += [at(t, y, x) for y, x in points]
            colors += [COLORS["positive" if positive else "negative"]] * len(points)
            symbols += ["disc"] * len(points)
            sizes += [3.0] * len(points)
        if not pts and not paths and self.points_layer is None:
            return
        self._ensure_prompt_layers()
        ndim = 3 if stack else 2
        key = (tuple(map(tuple, pts)), tuple(colors), tuple(symbols))
        if key != self._drawn_points:
            self._drawn_points = key
            layer = self.points_layer
            with layer.events.blocker_all():  # one refresh instead of one per property
                layer.data = np.array(pts, np.float64).reshape(-1, ndim)
                if pts:
                    layer.face_color = np.array(colors)
                    layer.symbol = symbols
                    layer.size = np.array(sizes)
            layer.refresh()
        self._draw_scribbles(paths, edges)

    def _draw_scribbles(self, paths: list, edges: list) -> None:
        """Update the Shapes layer only when the scribbles changed (adding one path is incremental)."""
        key = [(p.tobytes(), e) for p, e in zip(paths, edges)]
        old = self._drawn_paths
        if key == old:
            return
        layer = self.shapes_layer
        if len(key) == len(old) + 1 and key[:-1] == old:
            layer.add_paths([paths[-1]], edge_color=np.array([edges[-1]]), edge_width=2)
        else:
            layer.data = []
            if paths:
                layer.add_paths(paths, edge_color=np.array(edges), edge_width=2)
        self._drawn_paths = key

    def prompt_signs(self) -> list[str]:
        """The sign of every point in the Points layer ('positive', 'negative', 'extreme', 'pending')."""
        return list(self.signs)


def check_engine(name: str) -> str:
    """Raise a HitlError for an unknown engine name."""
    from napari_hitl.interactive.engine import available_engines

    if name not in available_engines():
        raise HitlError(f"unknown engine {name!r}; available: {', '.join(available_engines())}")
    return name
