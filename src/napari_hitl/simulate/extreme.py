"""Extreme points from a true mask, as a person would click them: the leftmost, rightmost,
topmost and bottommost pixels, each jittered a few pixels along the object (seeded)."""

from __future__ import annotations

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.prompts import ExtremePoints

__all__ = ["extreme_points"]


def extreme_points(mask: np.ndarray, jitter: int = 3, seed: int | np.random.Generator | None = 0) -> ExtremePoints:
    """ExtremePoints (left, right, top, bottom) of bool ``mask``.

    Each point is a random mask pixel within ``jitter`` pixels of the extreme coordinate (so it
    stays on the object, as a person's click on its outermost part would); ``jitter=0`` gives the
    exact extremes (the middle one where several pixels tie).
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise InputError(f"mask must be 2-D, got shape {m.shape}")
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise InputError("extreme points of an empty mask")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    j = max(int(jitter), 0)

    def pick(sel: np.ndarray) -> list[float]:
        idx = np.flatnonzero(sel)
        k = idx[rng.integers(len(idx))]
        return [float(ys[k]), float(xs[k])]

    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    exact = np.array([_mid(ys, xs, xs == x0), _mid(ys, xs, xs == x1),
                      _mid(ys, xs, ys == y0), _mid(ys, xs, ys == y1)], float)
    if j == 0:
        return ExtremePoints(exact)
    pts = np.array([pick(xs <= x0 + j), pick(xs >= x1 - j), pick(ys <= y0 + j), pick(ys >= y1 - j)], float)
    ex = ExtremePoints(pts)
    try:
        ex.validate(m.shape)
    except InputError:  # a tiny object where jitter would break the order: use the exact points
        return ExtremePoints(exact)
    return ex


def _mid(ys: np.ndarray, xs: np.ndarray, sel: np.ndarray) -> list[float]:
    idx = np.flatnonzero(sel)
    order = np.lexsort((xs[idx], ys[idx]))
    k = idx[order[len(order) // 2]]
    return [float(ys[k]), float(xs[k])]
