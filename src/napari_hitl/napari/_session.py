"""Prompt state of one image plane in the dock: regions, their prompts, masks and undo history.

Plain numpy (no Qt): the tools add prompts here, a worker turns a :meth:`PromptSession.snapshot`
into masks with :func:`predict_regions`, and :meth:`PromptSession.composite` gives the object
ids to show: the objects the plane had (``base``, plus any hand edits absorbed from the layer)
with every region's mask painted as its object. Each region is one object (an instance id
and a class); a prompt on an object the plane already had corrects that object.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.prompts import Click, ExtremePoints, RegionPrompts, Scribble


@dataclass
class Region:
    """One region being segmented: an id, its prompts (which carry its class), its mask and the
    object id it paints (a new object, or an object of the plane it corrects)."""

    id: int
    prompts: RegionPrompts
    mask: np.ndarray | None = None
    oid: int = 0

    @property
    def label(self) -> int:
        return int(self.prompts.label)


@dataclass
class Snapshot:
    """A copy of a session's regions for a worker: prompts, previous masks, the region to update."""

    regions: list[RegionPrompts]
    ids: list[int]
    prev_masks: list[np.ndarray | None]
    target: int
    shape: tuple[int, int]


def extreme_from_clicks(points) -> ExtremePoints:
    """Order four clicked (y, x) points as left, right, top and bottom."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) != 4:
        raise InputError(f"extreme points need four clicks, got {len(p)}")
    return ExtremePoints(np.stack([p[p[:, 1].argmin()], p[p[:, 1].argmax()],
                                   p[p[:, 0].argmin()], p[p[:, 0].argmax()]]))


@dataclass
class PromptSession:
    """Regions and prompts on one (H, W) label plane; ``history`` lists prompts for undo."""

    base: np.ndarray
    classes: dict[int, int] = field(default_factory=dict)  # class of each object id in ``base``
    regions: list[Region] = field(default_factory=list)
    history: list[tuple[str, int]] = field(default_factory=list)  # (kind, region id)
    pending_extreme: list[tuple[float, float]] = field(default_factory=list)
    active: int | None = None
    new_region: bool = False
    shown: np.ndarray | None = None
    id_source: object = None  # a callable giving new object ids (the project's), or None: the plane's next
    _next_id: int = 1

    def __post_init__(self):
        self.base = np.array(self.base, copy=True)
        self.classes = {int(k): int(v) for k, v in self.classes.items()}
        if self.shown is None:
            self.shown = self.base.copy()

    def next_oid(self) -> int:
        """An object id no object of this plane (or region) uses yet."""
        used = [int(self.base.max()) if self.base.size else 0, *self.classes, *(r.oid for r in self.regions)]
        return max(used) + 1

    def object_classes(self) -> dict[int, int]:
        """The class of every object id the composite shows (base objects and regions)."""
        out = dict(self.classes)
        out.update({r.oid: r.label for r in self.regions})
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.base.shape[:2])

    def region(self, rid: int | None) -> Region | None:
        return next((r for r in self.regions if r.id == rid), None)

    def region_at(self, y: float, x: float) -> Region | None:
        """The region whose current mask holds pixel (y, x) (the latest one painted wins)."""
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < self.shape[0] and 0 <= ix < self.shape[1]):
            return None
        for r in reversed(self.regions):
            if r.mask is not None and r.mask[iy, ix]:
                return r
        return None

    def _new(self, label: int, adopt: int = 0) -> Region:
        """A new region: a new object of class ``label``, or the plane's object ``adopt``."""
        oid = adopt or (int(self.id_source()) if self.id_source is not None else self.next_oid())
        mask = (self.base == adopt) if adopt else None
        r = Region(self._next_id, RegionPrompts(int(label)), mask=mask, oid=oid)
        self._next_id += 1
        self.regions.append(r)
        self.new_region = False
        return r

    def object_at(self, y: float, x: float) -> int:
        """The id of the plane's own object (not a region) at (y, x); 0 if none."""
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < self.shape[0] and 0 <= ix < self.shape[1]):
            return 0
        oid = int(self.base[iy, ix])
        return oid if oid in self.classes and all(r.oid != oid for r in self.regions) else 0

    def _target(self, y: float, x: float, positive: bool, label: int) -> Region | None:
        """Which region a prompt at (y, x) belongs to.

        Inside a region's mask: that region (a positive prompt of another class starts a new
        region instead). On an object the plane already had (of the selected class, or any
        class for a negative prompt): a region that corrects that object. Elsewhere: the
        active region if it has the selected class (negatives: whatever its class), else a
        new region for a positive prompt, none for a negative.
        """
        hit = self.region_at(y, x)
        if hit is not None and (not positive or hit.label == label):
            return hit
        own = self.object_at(y, x)
        if own and not self.new_region and (not positive or self.classes[own] == label):
            return self._new(self.classes[own], adopt=own)
        active = self.region(self.active)
        if active is not None and not self.new_region and (not positive or active.label == label):
            return active
        return self._new(label) if positive else None

    def _move_to_top(self, r: Region) -> None:
        self.regions.remove(r)
        self.regions.append(r)
        self.active = r.id

    def add_click(self, y: float, x: float, positive: bool, label: int) -> Region | None:
        """Add a click; returns the region it went to (None: a negative click with no region)."""
        self._check(y, x)
        r = self._target(y, x, positive, label)
        if r is None:
            return None
        r.prompts.clicks.append(Click(float(y), float(x), bool(positive)))
        self.history.append(("click", r.id))
        self._move_to_top(r)
        return r

    def add_scribble(self, points, positive: bool, label: int) -> Region | None:
        """Add a scribble; the region is decided by where it starts."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            raise InputError("empty scribble")
        h, w = self.shape
        pts = np.stack([np.clip(pts[:, 0], 0, h - 1), np.clip(pts[:, 1], 0, w - 1)], 1)
        r = self._target(pts[0, 0], pts[0, 1], positive, label)
        if r is None:
            return None
        r.prompts.scribbles.append(Scribble(pts, bool(positive)))
        self.history.append(("scribble", r.id))
        self._move_to_top(r)
        return r

    def add_extreme_point(self, y: float, x: float, label: int) -> Region | None:
        """Collect one extreme point; the fourth creates a new region (returned), else None."""
        self._check(y, x)
        self.pending_extreme.append((float(y), float(x)))
        if len(self.pending_extreme) < 4:
            self.history.append(("extreme_point", 0))
            return None
        extreme = extreme_from_clicks(self.pending_extreme)
        extreme.validate(self.shape)
        # the three earlier pending points are now part of the region: one undo step for all four
        self.history = [h for h in self.history if h[0] != "extreme_point"]
        self.pending_extreme = []
        r = self._new(label)
        r.prompts.extreme = extreme
        self.history.append(("extreme", r.id))
        self._move_to_top(r)
        return r

    def undo(self) -> Region | None:
        """Remove the last prompt. Returns the region to re-predict (None: nothing to predict,
        e.g. the region lost its last positive prompt and was removed, or a pending point)."""
        if not self.history:
            return None
        kind, rid = self.history.pop()
        if kind == "extreme_point":
            if self.pending_extreme:
                self.pending_extreme.pop()
            return None
        r = self.region(rid)
        if r is None:
            return None
        if kind == "click" and r.prompts.clicks:
            r.prompts.clicks.pop()
        elif kind == "scribble" and r.prompts.scribbles:
            r.prompts.scribbles.pop()
        elif kind == "extreme":
            r.prompts.extreme = None
        empty = not (r.prompts.clicks or r.prompts.scribbles or r.prompts.extreme is not None)
        if empty or (not r.prompts.has_positive and r.oid not in self.classes):
            self.regions.remove(r)  # a new object without a positive prompt, or a correction undone
            self.history = [h for h in self.history if h[1] != rid]
            if self.active == rid:
                self.active = self.regions[-1].id if self.regions else None
            return None
        self.active = r.id
        return r

    def reset(self) -> None:
        """Forget every prompt and region (the plane goes back to ``base``)."""
        self.regions.clear()
        self.history.clear()
        self.pending_extreme.clear()
        self.active = None

    def snapshot(self, target: Region | None) -> Snapshot:
        """Copies of every region's prompts and masks, for a worker."""
        regs = [copy.deepcopy(r.prompts) for r in self.regions]
        prev = [None if r.mask is None else r.mask.copy() for r in self.regions]
        tid = target.id if target is not None else (self.regions[-1].id if self.regions else 0)
        return Snapshot(regs, [r.id for r in self.regions], prev, tid, self.shape)

    def set_masks(self, masks: dict[int, np.ndarray]) -> None:
        """Store new masks by region id (regions removed meanwhile are ignored)."""
        for rid, m in masks.items():
            r = self.region(rid)
            if r is not None:
                r.mask = np.asarray(m, bool)

    def absorb(self, current: np.ndarray) -> None:
        """Keep hand edits: pixels where the layer differs from what was last shown go to ``base``."""
        current = np.asarray(current)
        changed = current != self.shown
        if changed.any():
            self.base[changed] = current[changed]

    def composite(self) -> np.ndarray:
        """``base`` with each region's mask painted as its object (later regions on top); an
        object a region corrects keeps only the region's mask."""
        out = self.base.copy()
        for r in self.regions:
            if r.mask is not None:
                if r.oid in self.classes:
                    out[(out == r.oid) & ~r.mask] = 0
                out[r.mask] = r.oid
        return out

    def commit(self, current: np.ndarray, classes: dict[int, int] | None = None) -> None:
        """After an accept: what the layer shows becomes the base (with its objects' classes);
        prompts are done."""
        if classes is None:
            classes = self.object_classes()
        self.base = np.array(current, copy=True)
        present = set(np.unique(self.base).tolist())
        self.classes = {k: v for k, v in classes.items() if k in present}
        self.shown = self.base.copy()
        self.reset()

    def _check(self, y: float, x: float) -> None:
        h, w = self.shape
        if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
            raise InputError(f"point (y={y:.0f}, x={x:.0f}) is outside the {h}x{w} image")


def predict_regions(engine, snap: Snapshot, full_image: bool) -> dict[int, np.ndarray]:
    """Masks by region id from an engine (runs on the worker).

    Full-image mode: every region at once (``engine.predict_all``), composed on the canvas by
    :func:`napari_hitl.interactive.canvas.compose` (each pixel to the region with the largest
    logit; outside extreme-point boxes only if that logit is positive): regions never overlap.
    Otherwise only the target region is predicted, on its own.
    """
    if not snap.regions:
        return {}
    if full_image:
        from napari_hitl.interactive.canvas import compose, coverage

        logits = engine.predict_all(snap.regions, snap.prev_masks)
        canvas = compose(logits, snap.ids, coverage(snap.regions, snap.shape))
        return {rid: canvas == rid for rid in snap.ids}
    k = snap.ids.index(snap.target)
    return {snap.target: engine.predict(snap.regions[k], prev_mask=snap.prev_masks[k]) > 0}
