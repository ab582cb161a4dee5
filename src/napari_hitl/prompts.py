"""Prompts a person gives an interactive engine: clicks, scribbles, extreme points, per region.

Validation turns bad prompts into :class:`~napari_hitl.errors.InputError` with the bad value
named; :func:`rasterize` turns a region's prompts into the positive / negative maps a learned
model takes (disks for clicks and extreme points, few-pixel lines for scribbles), where the
other regions' positive prompts count as negatives of this one (full-image mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from napari_hitl.errors import InputError

__all__ = ["Click", "Scribble", "ExtremePoints", "RegionPrompts", "rasterize", "disk_map", "line_map"]

#: the order of the four extreme points
EXTREME_ORDER = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Click:
    """One click at pixel (y, x); positive: "belongs to the region", negative: "does not"."""

    y: float
    x: float
    positive: bool = True


@dataclass(frozen=True, eq=False)
class Scribble:
    """A polyline of (y, x) points with one sign along its whole length."""

    points: np.ndarray
    positive: bool = True

    def __post_init__(self):
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.size == 0:
            raise InputError("empty scribble: a scribble needs at least one (y, x) point")
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise InputError(f"scribble points must have shape (N, 2) as (y, x), got {pts.shape}")
        if not np.isfinite(pts).all():
            raise InputError("scribble points contain NaN or infinity")
        object.__setattr__(self, "points", pts)


@dataclass(frozen=True, eq=False)
class ExtremePoints:
    """The four outermost points of a region, as (y, x) rows: left, right, top, bottom."""

    points: np.ndarray

    def __post_init__(self):
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.shape != (4, 2):
            raise InputError(f"extreme points must have shape (4, 2) (left, right, top, bottom as y, x), "
                             f"got {pts.shape}")
        if not np.isfinite(pts).all():
            raise InputError("extreme points contain NaN or infinity")
        object.__setattr__(self, "points", pts)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight box (y0, x0, y1, x1), inclusive pixel coordinates: top y, left x, bottom y, right x."""
        p = self.points
        return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))

    def validate(self, shape: tuple[int, ...], tolerance: float = 1.0) -> None:
        """Raise InputError if a point is outside ``shape`` or a point is not extreme in its direction."""
        for name, (y, x) in zip(EXTREME_ORDER, self.points):
            _check_inside(y, x, shape, f"{name} extreme point")
        p = self.points
        checks = (("left", 0, p[:, 1].min(), p[0, 1]), ("right", 1, p[:, 1].max(), p[1, 1]),
                  ("top", 2, p[:, 0].min(), p[2, 0]), ("bottom", 3, p[:, 0].max(), p[3, 0]))
        for name, i, best, value in checks:
            if abs(best - value) > tolerance:
                raise InputError(f"extreme points are not extreme: the {name} point (y={p[i, 0]:g}, "
                                 f"x={p[i, 1]:g}) is not the {name}most of the four (expected order "
                                 f"left, right, top, bottom)")
        if p[1, 1] - p[0, 1] < 0 or p[3, 0] - p[2, 0] < 0:
            raise InputError("extreme points are not extreme: the box they span is empty")


@dataclass
class RegionPrompts:
    """Everything the person said about one region: its label, clicks, scribbles, extreme points."""

    label: int
    clicks: list[Click] = field(default_factory=list)
    scribbles: list[Scribble] = field(default_factory=list)
    extreme: ExtremePoints | None = None

    @property
    def has_positive(self) -> bool:
        """True if any prompt says where the region is (a positive click/scribble or extreme points)."""
        return (self.extreme is not None or any(c.positive for c in self.clicks)
                or any(s.positive for s in self.scribbles))

    def positive_points(self) -> np.ndarray:
        """(N, 2) float (y, x) of every positive prompt point (clicks, scribble vertices, extreme points)."""
        pts = [np.array([[c.y, c.x]]) for c in self.clicks if c.positive]
        pts += [s.points for s in self.scribbles if s.positive]
        if self.extreme is not None:
            pts.append(self.extreme.points)
        return np.concatenate(pts, axis=0) if pts else np.zeros((0, 2))

    def validate(self, shape: tuple[int, ...], prior: np.ndarray | None = None) -> None:
        """Raise InputError naming the bad value: label < 1, a point outside the image, an empty
        scribble, extreme points that are not extreme, or no positive prompt at all. A non-empty
        ``prior`` (the region's previous mask) already says where the region is, so then
        negative prompts alone are fine: they correct that mask."""
        shape = _hw(shape)
        if isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)) or self.label < 1:
            raise InputError(f"region label must be an integer >= 1 (0 means unassigned), got {self.label!r}")
        for i, c in enumerate(self.clicks):
            if not isinstance(c, Click):
                raise InputError(f"region {self.label}: click {i} is a {type(c).__name__}, not a Click")
            _check_inside(c.y, c.x, shape, f"region {self.label}: click {i}")
        for i, s in enumerate(self.scribbles):
            if not isinstance(s, Scribble):
                raise InputError(f"region {self.label}: scribble {i} is a {type(s).__name__}, not a Scribble")
            if len(s.points) == 0:
                raise InputError(f"region {self.label}: scribble {i} is empty")
            for y, x in s.points:
                _check_inside(y, x, shape, f"region {self.label}: scribble {i} point")
        if self.extreme is not None:
            if not isinstance(self.extreme, ExtremePoints):
                raise InputError(f"region {self.label}: extreme is a {type(self.extreme).__name__}, "
                                 f"not ExtremePoints")
            try:
                self.extreme.validate(shape)
            except InputError as err:
                raise InputError(f"region {self.label}: {err}") from None
        if not self.has_positive and (prior is None or not np.any(prior)):
            raise InputError(f"region {self.label} has no positive prompt (a positive click, a positive "
                             f"scribble or extreme points): nothing says where it is")

    def bbox(self, shape: tuple[int, ...], margin: float = 0.4, min_size: int = 48,
             include: np.ndarray | None = None) -> tuple[int, int, int, int]:
        """Crop box (y0, x0, y1, x1), end exclusive, clipped to the image: the extent of the
        positive prompts (and of the bool mask ``include``, e.g. the previous mask), grown by
        ``margin`` times its size on each side and to at least ``min_size`` pixels a side."""
        h, w = _hw(shape)
        pts = self.positive_points()
        ys, xs = list(pts[:, 0]), list(pts[:, 1])
        if include is not None and include.any():
            rows = np.flatnonzero(include.any(axis=1))
            cols = np.flatnonzero(include.any(axis=0))
            ys += [rows[0], rows[-1]]
            xs += [cols[0], cols[-1]]
        if not ys:
            return 0, 0, h, w
        y0, y1, x0, x1 = min(ys), max(ys) + 1, min(xs), max(xs) + 1
        out = []
        for lo, hi, size in ((y0, y1, h), (x0, x1, w)):
            extent = hi - lo
            grow = max(margin * extent, (min_size - extent) / 2.0, 0.0)
            lo, hi = int(np.floor(lo - grow)), int(np.ceil(hi + grow))
            lo, hi = max(lo, 0), min(hi, size)
            out.append((lo, hi))
        (y0, y1), (x0, x1) = out
        return y0, x0, y1, x1


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        raise InputError(f"image shape must be (H, W[, C]) with H, W >= 1, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_inside(y: float, x: float, shape: Sequence[int], what: str) -> None:
    h, w = _hw(shape)
    if not (np.isfinite(y) and np.isfinite(x)):
        raise InputError(f"{what} has a non-finite position (y={y}, x={x})")
    if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
        raise InputError(f"{what} at (y={y:g}, x={x:g}) is outside the {h}x{w} image")


def disk_map(points: np.ndarray, shape: Sequence[int], radius: int = 5, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 HxW map, 1 inside a disk of ``radius`` around each (y, x) point."""
    import cv2

    h, w = _hw(shape)
    if out is None:
        out = np.zeros((h, w), np.float32)
    for y, x in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        cv2.circle(out, (int(round(x)), int(round(y))), int(radius), 1.0, thickness=-1)
    return out


def line_map(points: np.ndarray, shape: Sequence[int], width: int = 3, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 HxW map, 1 along the (y, x) polyline drawn ``width`` pixels wide."""
    import cv2

    h, w = _hw(shape)
    if out is None:
        out = np.zeros((h, w), np.float32)
    pts = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)[:, ::-1]).astype(np.int32)
    if len(pts) == 1:
        cv2.circle(out, (int(pts[0, 0]), int(pts[0, 1])), max(int(width) // 2, 0), 1.0, thickness=-1)
    else:
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], False, 1.0, thickness=max(int(width), 1))
    return out


def _draw(region: RegionPrompts, positive: bool, shape, click_radius: int, scribble_width: int,
          out: np.ndarray, with_extreme: bool) -> None:
    pts = [[c.y, c.x] for c in region.clicks if c.positive == positive]
    if with_extreme and region.extreme is not None:
        pts += region.extreme.points.tolist()
    if pts:
        disk_map(np.array(pts), shape, click_radius, out=out)
    for s in region.scribbles:
        if s.positive == positive:
            line_map(s.points, shape, scribble_width, out=out)


def rasterize(region: RegionPrompts, shape: Sequence[int], others: Sequence[RegionPrompts] = (),
              click_radius: int = 5, scribble_width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 (pos, neg) HxW maps for ``region``.

    pos: disks for its positive clicks and extreme points, lines for its positive scribbles.
    neg: the same for its negative prompts, plus every positive prompt of ``others`` (the other
    regions of the image), so extending one region tells its neighbours to shrink.
    """
    h, w = _hw(shape)
    pos = np.zeros((h, w), np.float32)
    neg = np.zeros((h, w), np.float32)
    _draw(region, True, (h, w), click_radius, scribble_width, pos, with_extreme=True)
    _draw(region, False, (h, w), click_radius, scribble_width, neg, with_extreme=False)
    for other in others:
        if other is region:
            continue
        _draw(other, True, (h, w), click_radius, scribble_width, neg, with_extreme=True)
    return pos, neg
