"""Click robot: a simulated annotator that clicks where the current mask is most wrong.

At each step it takes the largest error region (false negatives and false positives as
connected components) and clicks at its interior-most point, the maximum of the distance
transform (the image border and ignored pixels count as the region's border); positive for
a miss, negative for a false alarm. It never clicks on ignored pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_hitl.errors import InputError
from napari_hitl.prompts import Click

__all__ = ["next_click", "interior_point", "error_masks"]


def _as_bool(a, name: str, shape=None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D mask, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise InputError(f"{name} has shape {a.shape}, expected {shape}")
    return a.astype(bool, copy=False)


def error_masks(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(misses, false_alarms) as bool HxW maps, ignored pixels removed from both."""
    truth = _as_bool(truth, "truth")
    pred = _as_bool(pred, "pred", truth.shape)
    fn = truth & ~pred
    fp = pred & ~truth
    if ignore is not None:
        ign = _as_bool(ignore, "ignore", truth.shape)
        fn &= ~ign
        fp &= ~ign
    return fn, fp


def interior_point(mask: np.ndarray) -> tuple[int, int, float]:
    """(y, x, distance) of the pixel of ``mask`` farthest from its border (image edge counts as border);
    among equally deep pixels the one nearest their centre."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("interior_point of an empty mask")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    dist = ndimage.distance_transform_edt(crop)
    best = float(dist.max())
    # a ridge of equally deep pixels (e.g. in a rectangle): take the one nearest its middle
    yy, xx = np.nonzero(dist >= best - 1e-6)
    k = int(np.argmin((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2))
    return int(yy[k] - 1 + y0), int(xx[k] - 1 + x0), best


def _largest_component(err: np.ndarray) -> tuple[np.ndarray | None, int]:
    if not err.any():
        return None, 0
    lab, n = ndimage.label(err)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(np.argmax(sizes))
    return lab == k, int(sizes[k])


def next_click(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The robot's next click: interior-most point of the largest error component, or None if none.

    Positive where the region was missed (truth & ~pred), negative on a false alarm.
    """
    fn, fp = error_masks(pred, truth, ignore)
    comp_fn, size_fn = _largest_component(fn)
    comp_fp, size_fp = _largest_component(fp)
    if comp_fn is None and comp_fp is None:
        return None
    positive = size_fn >= size_fp
    y, x, _ = interior_point(comp_fn if positive else comp_fp)
    return Click(float(y), float(x), positive=positive)
