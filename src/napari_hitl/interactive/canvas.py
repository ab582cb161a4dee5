"""Full-image mode: every region's logits are pasted into the image canvas and compete.

Where the regions cover the image (their extreme-point boxes, or wherever one of them claims
a pixel), each pixel goes to the region with the highest logit, which is the argmax of a
softmax across regions: no overlaps, and no holes where regions meet. Elsewhere an
"unassigned" channel (logit 0) competes too, so uncovered pixels stay 0 unless a region
claims them. One region's positive prompts are negatives of the others (the engine gets them
as ``others``). Works with any registered engine through :meth:`Engine.predict_all`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import Engine
from napari_hitl.prompts import RegionPrompts

__all__ = ["segment_full_image", "compose", "coverage", "check_regions"]


def check_regions(regions: Sequence[RegionPrompts], shape) -> None:
    """Validate every region and that their labels are distinct (InputError otherwise)."""
    seen = set()
    for r in regions:
        r.validate(shape)
        if r.label in seen:
            raise InputError(f"two regions share the label {r.label}; each region needs its own label")
        seen.add(r.label)


def coverage(regions: Sequence[RegionPrompts], shape) -> np.ndarray:
    """Bool HxW: the area the regions' prompts cover, i.e. the union of their extreme-point boxes."""
    h, w = int(shape[0]), int(shape[1])
    cov = np.zeros((h, w), bool)
    for r in regions:
        if r.extreme is not None:
            y0, x0, y1, x1 = r.extreme.box
            cov[max(int(np.floor(y0)), 0):int(np.ceil(y1)) + 1, max(int(np.floor(x0)), 0):int(np.ceil(x1)) + 1] = True
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
