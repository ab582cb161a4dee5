"""Full-image mode: every region's logits are pasted into the image canvas and compete.

Where the regions cover the image (their extreme-point boxes, or wherever one of them claims
a pixel), each pixel goes to the region with the highest logit, which is the argmax of a
softmax across regions: no overlaps, and no holes where regions meet. Elsewhere an
"unassigned" channel (logit 0) competes too, so uncovered pixels stay 0 unless a region
claims them. One region's positive prompts are negatives of the others (the engine gets them
as ``others``). Works with any registered engine through :meth:`Engine.predict_all`. On a
large image the same runs over windows (:func:`segment_windows`): the regions compete over
the union of the windows their engine looked at, never over the whole image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import Engine, Window
from napari_hitl.prompts import RegionPrompts

__all__ = ["segment_full_image", "segment_windows", "compose", "compose_windows", "coverage", "check_regions"]


def check_regions(regions: Sequence[RegionPrompts], shape) -> None:
    """Validate every region and that their labels are distinct (InputError otherwise)."""
    seen = set()
    for r in regions:
        r.validate(shape)
        if r.label in seen:
            raise InputError(f"two regions share the label {r.label}; each region needs its own label")
        seen.add(r.label)


def coverage(regions: Sequence[RegionPrompts], shape, box: Sequence[int] | None = None) -> np.ndarray:
    """Bool HxW: the area the regions' prompts cover, i.e. the union of their extreme-point boxes
    (only over ``box`` = (y0, x0, y1, x1) of the image when given)."""
    h, w = int(shape[0]), int(shape[1])
    by0, bx0, by1, bx1 = (0, 0, h, w) if box is None else (int(v) for v in box)
    cov = np.zeros((by1 - by0, bx1 - bx0), bool)
    for r in regions:
        if r.extreme is not None:
            y0, x0, y1, x1 = r.extreme.box
            ys = max(int(np.floor(y0)), by0) - by0, min(int(np.ceil(y1)) + 1, by1) - by0
            xs = max(int(np.floor(x0)), bx0) - bx0, min(int(np.ceil(x1)) + 1, bx1) - bx0
            if ys[1] > ys[0] and xs[1] > xs[0]:
                cov[ys[0]:ys[1], xs[0]:xs[1]] = True
    return cov


def compose(logits: Sequence[np.ndarray], labels: Sequence[int], covered: np.ndarray | None = None
            ) -> np.ndarray:
    """(H, W) int32 label map from per-region logits: argmax across regions, plus an
    "unassigned" channel (logit 0, label 0) that competes only outside ``covered``."""
    if len(logits) != len(labels):
        raise InputError(f"got {len(logits)} logit maps for {len(labels)} labels")
    if not logits:
        if covered is None:
            raise InputError("compose needs at least one logit map or the canvas shape")
        return np.zeros(np.shape(covered), np.int32)
    shape = np.shape(logits[0])
    best = np.full(shape, -np.inf, np.float32)
    out = np.zeros(shape, np.int32)
    for lg, lab in zip(logits, labels):
        if np.shape(lg) != shape:
            raise InputError(f"logit maps differ in shape: {np.shape(lg)} vs {shape}")
        better = lg > best
        best[better] = lg[better]
        out[better] = int(lab)
    unassigned = best <= 0.0
    if covered is not None:
        unassigned &= ~np.asarray(covered, bool)
    out[unassigned] = 0
    return out


def segment_full_image(engine: Engine, image: np.ndarray | None, regions: Sequence[RegionPrompts],
                       prev_labels: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int32 labels: ``region.label`` per pixel, 0 = unassigned.

    ``image`` is prepared on ``engine`` first (pass None if it already is); ``prev_labels`` gives
    each region's previous mask (``prev_labels == region.label``).
    """
    regions = list(regions)
    if image is not None:
        engine.prepare(image)
        shape = np.shape(image)[:2]
    elif prev_labels is not None:
        shape = np.shape(prev_labels)
    else:
        shape = getattr(engine, "shape", None)
        if shape is None:
            raise InputError("segment_full_image needs the image (or prev_labels) to know the canvas size")
    check_regions(regions, shape)
    prev = None
    if prev_labels is not None:
        prev_labels = np.asarray(prev_labels)
        if prev_labels.shape != tuple(shape):
            raise InputError(f"prev_labels has shape {prev_labels.shape}, expected {tuple(shape)}")
        prev = [prev_labels == r.label for r in regions]
    if not regions:
        return np.zeros(shape, np.int32)
    logits = engine.predict_all(regions, prev)
    return compose(logits, [r.label for r in regions], coverage(regions, shape))


def compose_windows(windows: Sequence[Window], labels: Sequence[int], regions: Sequence[RegionPrompts],
                    shape) -> Window:
    """:func:`compose` over the union box of per-region logit windows (a region has no say
    outside its window); the extreme-point boxes count as covered within it."""
    if len(windows) != len(labels) or len(windows) != len(regions):
        raise InputError(f"got {len(windows)} windows for {len(labels)} labels and {len(regions)} regions")
    if not windows:
        raise InputError("compose_windows needs at least one window")
    boxes = np.array([w.box for w in windows])
    box = (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
    h, w = int(shape[0]), int(shape[1])
    if box[2] > h or box[3] > w:
        raise InputError(f"windows reach {box[2]}x{box[3]}, past the {h}x{w} image")
    logits = [win.over(box, -np.inf) for win in windows]
    return Window(compose(logits, labels, coverage(regions, shape, box)), box[0], box[1])


def segment_windows(engine: Engine, regions: Sequence[RegionPrompts],
                    prev: Sequence[Window | np.ndarray | None] | None = None) -> Window:
    """Full-image mode on a prepared engine, answered as a window of int32 labels
    (``region.label`` per pixel, 0 = unassigned) over the part of the image the regions' crops
    span; ``prev`` gives each region's previous mask (a window or a full mask)."""
    regions = list(regions)
    shape = engine.shape
    check_regions(regions, shape)
    if not regions:
        raise InputError("segment_windows needs at least one region")
    windows = engine.predict_all_windows(regions, prev)
    return compose_windows(windows, [r.label for r in regions], regions, shape)
