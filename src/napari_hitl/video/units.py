"""Annotation units of a video: whole frames, grid rectangles ("rect40" = 40x40 px cells) or SLIC superpixels.

The units of a frame partition it, so a frame's units are one integer map (unit id per
pixel) and per-unit statistics are bincounts. Each unit knows its frame and pixel mask (what a
unit costs a simulated person: :func:`napari_hitl.simulate.cost.unit_clicks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError

#: unit kinds :func:`parse_unit` understands
KINDS = ("frame", "rect", "superpixel")


@dataclass(eq=False)
class Unit:
    """One annotation unit: ``index`` (global), ``frame``, ``local`` id in the frame, bounding box."""

    index: int
    frame: int
    local: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)
    kind: str


def parse_unit(spec: str) -> tuple[str, int]:
    """Parse 'frame', 'rect40' / 'rect' (40 px) or 'superpixel300' / 'sp300' / 'slic' (300 segments).

    Returns ``(kind, size)``: the cell side in pixels for rectangles, the number of SLIC
    segments per frame for superpixels, 0 for frames.
    """
    s = str(spec).strip().lower()
    if s in ("frame", "frames"):
        return "frame", 0
    m = re.fullmatch(r"(rect|rectangle)(\d*)", s)
    if m:
        size = int(m.group(2) or 40)
        if size < 2:
            raise InputError(f"rectangle size must be at least 2 px, got {spec!r}")
        return "rect", size
    m = re.fullmatch(r"(superpixel|sp|slic)(\d*)", s)
    if m:
        n = int(m.group(2) or 300)
        if n < 1:
            raise InputError(f"superpixel count must be >= 1, got {spec!r}")
        return "superpixel", n
    raise InputError(f"unknown annotation unit {spec!r}; use 'frame', 'rect<N>' (e.g. rect40) or "
                     f"'superpixel<N>' (e.g. superpixel300)")


class UnitSet:
    """All units of a video of ``num_frames`` frames of ``(height, width)`` pixels.

    Build with :meth:`frames`, :meth:`rectangles` or :meth:`superpixels` (or
    :meth:`from_spec`). Global unit ids run frame by frame: frame t holds ids
    ``offsets[t] .. offsets[t + 1] - 1``.
    """

    def __init__(self, kind: str, num_frames: int, shape: tuple[int, int], size: int = 0,
                 segments: list[np.ndarray] | None = None):
        if kind not in KINDS:
            raise InputError(f"unknown unit kind {kind!r}; use one of {', '.join(KINDS)}")
        if num_frames < 1 or len(shape) != 2 or min(shape) < 1:
            raise InputError(f"a video needs >= 1 frame of positive size, got {num_frames} x {shape}")
        self.kind, self.size = kind, int(size)
        self.num_frames, self.shape = int(num_frames), (int(shape[0]), int(shape[1]))
        self._segments = segments
        h, w = self.shape
        if kind == "frame":
            counts = np.ones(num_frames, np.int64)
        elif kind == "rect":
            self._ny, self._nx = -(-h // self.size), -(-w // self.size)
            counts = np.full(num_frames, self._ny * self._nx, np.int64)
        else:
            if segments is None or len(segments) != num_frames:
                raise InputError("superpixel units need one segment map per frame")
            counts = np.array([int(s.max()) + 1 for s in segments], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def frames(cls, num_frames: int, shape) -> "UnitSet":
        """One unit per frame."""
        return cls("frame", num_frames, shape)

    @classmethod
    def rectangles(cls, num_frames: int, shape, size: int = 40) -> "UnitSet":
        """A grid of ``size`` x ``size`` px cells per frame (cells at the right/bottom edge are cut)."""
        return cls("rect", num_frames, shape, size=size)

    @classmethod
    def superpixels(cls, frames, n_segments: int = 300, compactness: float = 10.0, progress=None) -> "UnitSet":
        """SLIC superpixels of every frame (``frames``: a sequence of HxW or HxWx3 images)."""
        from napari_hitl.active.superpixels import slic_superpixels

        segs = []
        for t, f in enumerate(frames):
            seg = slic_superpixels(f, n_segments=n_segments, compactness=compactness)
            segs.append(seg.astype(np.int16 if seg.max() < 32767 else np.int32))
            if progress is not None:
                progress(t + 1, len(frames))
        return cls("superpixel", len(segs), segs[0].shape[:2], size=n_segments, segments=segs)

    @classmethod
    def from_spec(cls, spec: str, frames, progress=None) -> "UnitSet":
        """Units named by ``spec`` (see :func:`parse_unit`) for a sequence of frames."""
        kind, size = parse_unit(spec)
        n, shape = len(frames), np.asarray(frames[0]).shape[:2]
        if kind == "frame":
            return cls.frames(n, shape)
        if kind == "rect":
            return cls.rectangles(n, shape, size)
        return cls.superpixels(frames, size, progress=progress)

    # -- lookup ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def name(self) -> str:
        return {"frame": "frame", "rect": f"rect{self.size}", "superpixel": f"superpixel{self.size}"}[self.kind]

    def count(self, t: int) -> int:
        """Number of units in frame ``t``."""
        return int(self.offsets[t + 1] - self.offsets[t])

    def frame_of(self, index) -> np.ndarray | int:
        """Frame of global unit id(s) ``index``."""
        f = np.searchsorted(self.offsets, np.asarray(index), side="right") - 1
        return int(f) if np.ndim(f) == 0 else f

    def frame_map(self, t: int) -> np.ndarray:
        """(H, W) int32 map of frame ``t``: the local unit id of every pixel."""
        if not 0 <= t < self.num_frames:
            raise InputError(f"frame {t} is outside a video of {self.num_frames} frames")
        h, w = self.shape
        if self.kind == "frame":
            return np.zeros((h, w), np.int32)
        if self.kind == "rect":
            return ((np.arange(h) // self.size)[:, None] * self._nx
                    + (np.arange(w) // self.size)[None, :]).astype(np.int32)
        return np.asarray(self._segments[t], np.int32)

    def unit(self, index: int) -> Unit:
        """The :class:`Unit` with global id ``index``."""
        if not 0 <= index < len(self):
            raise InputError(f"unit {index} does not exist (this video has {len(self)} units)")
        t = self.frame_of(index)
        local = int(index - self.offsets[t])
        h, w = self.shape
        if self.kind == "frame":
            bbox = (0, 0, h, w)
        elif self.kind == "rect":
            y0, x0 = (local // self._nx) * self.size, (local % self._nx) * self.size
            bbox = (y0, x0, min(y0 + self.size, h), min(x0 + self.size, w))
        else:
            ys, xs = np.nonzero(self._segments[t] == local)
            bbox = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        return Unit(int(index), t, local, bbox, self.kind)

    def local_mask(self, index: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """(bbox, bool mask inside the bbox) of unit ``index``: cheap, no full-frame array."""
        u = self.unit(index)
        y0, x0, y1, x1 = u.bbox
        if self.kind == "superpixel":
            return u.bbox, np.asarray(self._segments[u.frame][y0:y1, x0:x1]) == u.local
        return u.bbox, np.ones((y1 - y0, x1 - x0), bool)

    def mask(self, index: int) -> np.ndarray:
        """Full (H, W) bool pixel mask of unit ``index`` in its frame."""
        bbox, local = self.local_mask(index)
        y0, x0, y1, x1 = bbox
        out = np.zeros(self.shape, bool)
        out[y0:y1, x0:x1] = local
        return out

    def unit_means(self, t: int, values: np.ndarray) -> np.ndarray:
        """Mean of a (H, W) map over each unit of frame ``t`` (length ``count(t)``)."""
        values = np.asarray(values, np.float64)
        if values.shape != self.shape:
            raise InputError(f"map of shape {values.shape} does not match the units' frame shape {self.shape}")
        return mean_per_unit(self.frame_map(t), values, self.count(t))

    def frame_map_at(self, t: int, shape: tuple[int, int]) -> np.ndarray:
        """Frame ``t``'s unit map resampled (nearest) to another ``shape``, e.g. a working resolution."""
        import cv2

        m = self.frame_map(t)
        if tuple(shape) == self.shape:
            return m
        return cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def mean_per_unit(unit_map: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` over each of the ``n`` units of ``unit_map`` (same shape; 0 for a unit
    with no pixel, e.g. one too small to survive resampling to a working resolution)."""
    ids = np.asarray(unit_map).ravel()
    sums = np.bincount(ids, weights=np.asarray(values, np.float64).ravel(), minlength=n)[:n]
    return sums / np.maximum(np.bincount(ids, minlength=n)[:n], 1)
