"""Scribble robot: a simulated annotator that draws one corrective scribble at a time.

It picks the error region whose correction would gain the most IoU, starts on that region's
border where it touches the correctly labelled part, passes through two more points inside
it along a smooth curve, and of ten tries keeps the longest curve (cut where it would leave
the true region) that stays inside the true region: positive on a miss, negative on a
false alarm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_hitl.prompts import Scribble, line_map
from napari_hitl.simulate.clicker import error_masks, interior_point

__all__ = ["next_scribble", "best_error_region", "smooth_curve", "scribble_pixels"]


def best_error_region(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None
                      ) -> tuple[np.ndarray, bool] | None:
    """(component mask, positive) of the error whose correction gains the most IoU, or None."""
    fn, fp = error_masks(pred, truth, ignore)
    if not fn.any() and not fp.any():
        return None
    keep = np.ones(truth.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    t, p = np.asarray(truth, bool) & keep, np.asarray(pred, bool) & keep
    inter = float(np.count_nonzero(t & p))
    union = float(np.count_nonzero(t | p))
    best, best_gain = None, -1.0
    for err, positive in ((fn, True), (fp, False)):
        if not err.any():
            continue
        lab, n = ndimage.label(err)
        sizes = np.bincount(lab.ravel())[1:].astype(float)
        # fixing a miss of size a: (I + a) / U; removing a false alarm of size a: I / (U - a)
        gains = (inter + sizes) / union if positive else inter / np.maximum(union - sizes, 1.0)
        k = int(np.argmax(gains))
        if gains[k] > best_gain:
            best_gain, best = float(gains[k]), (lab == k + 1, positive)
    return best


def smooth_curve(p0, p1, p2, step: float = 1.0) -> np.ndarray:
    """(N, 2) points, about ``step`` apart, of the parabola through p0, p1 (at its middle), p2."""
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    ctrl = 2.0 * p1 - 0.5 * (p0 + p2)  # quadratic Bezier control point so that B(0.5) = p1
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    n = max(2, int(np.ceil(length / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * ctrl + t ** 2 * p2


def _inside_prefix(curve: np.ndarray, allowed: np.ndarray, width: int) -> np.ndarray:
    """The longest prefix of ``curve`` whose drawn line (``width`` px) stays in ``allowed``."""
    h, w = allowed.shape
    r = width // 2 + 1  # one pixel of slack for the thinned polyline
    for i, (y, x) in enumerate(np.round(curve).astype(int)):
        y0, y1, x0, x1 = y - r, y + r + 1, x - r, x + r + 1
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w or not allowed[y0:y1, x0:x1].all():
            return curve[:i]
    return curve


def _length(curve: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(curve, axis=0), axis=1).sum()) if len(curve) > 1 else 0.0


def next_scribble(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None,
                  seed: int | np.random.Generator | None = 0, tries: int = 10, width: int = 3
                  ) -> Scribble | None:
    """The robot's next scribble on the worst error of ``pred`` against ``truth``, or None if none.

    The scribble, drawn ``width`` pixels wide, lies inside the true region (``truth`` for a
    positive scribble, its complement for a negative one) and never on ``ignore``.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    found = best_error_region(pred, truth, ignore)
    if found is None:
        return None
    comp, positive = found
    truth_b, pred_b = np.asarray(truth, bool), np.asarray(pred, bool)
    allowed = truth_b.copy() if positive else ~truth_b
    if ignore is not None:
        allowed &= ~np.asarray(ignore, bool)
    # the correctly labelled pixels of the same sign, which the scribble extends into the error
    correct = (pred_b & truth_b) if positive else (~pred_b & ~truth_b)
    touching = comp & ndimage.binary_dilation(correct)
    if not touching.any():
        touching = comp & ~ndimage.binary_erosion(comp)
    starts = np.argwhere(touching)
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    inner = np.argwhere(dist >= max(1.0, 0.5 * dist.max()))
    if len(inner) == 0:
        inner = np.argwhere(comp)
    best = np.zeros((0, 2))
    for _ in range(max(1, tries)):
        p0 = starts[rng.integers(len(starts))]
        p1, p2 = inner[rng.integers(len(inner), size=2)]
        if np.linalg.norm(p2 - p0) < np.linalg.norm(p1 - p0):
            p1, p2 = p2, p1  # pass the nearer inner point first, end at the farther one
        curve = _inside_prefix(smooth_curve(p0, p1, p2), allowed, width)
        if _length(curve) > _length(best):
            best = curve
    if _length(best) < 1.0:
        y, x, _ = interior_point(comp & allowed if (comp & allowed).any() else comp)
        best = np.array([[float(y), float(x)]])
    else:
        # thin the polyline to about every third pixel, keeping its end
        idx = np.unique(np.r_[np.arange(0, len(best), 3), len(best) - 1])
        best = best[idx]
    return Scribble(np.round(best), positive=positive)


def scribble_pixels(scribble: Scribble, shape, width: int = 3) -> np.ndarray:
    """Bool mask of the pixels a scribble covers when drawn ``width`` pixels wide."""
    return line_map(scribble.points, shape, width) > 0
