"""Click robot: a simulated annotator that clicks where the current mask is most wrong.

At each step it takes the largest error region (false negatives and false positives as
connected components) and clicks at its interior-most point, the maximum of the distance
transform (the image border and ignored pixels count as the region's border); positive for
a miss, negative for a false alarm. It never clicks on ignored pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_hitl.errors import InputError
from napari_hitl.prompts import Click

__all__ = ["next_click", "interior_point", "error_masks", "ClickRun", "run_clicks"]


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


@dataclass
class ClickRun:
    """What the click robot did to one object: the final mask, its clicks, IoU after each
    click and the engine's time (ms) for each prediction."""

    mask: np.ndarray
    clicks: list = field(default_factory=list)
    ious: list = field(default_factory=list)
    ms: list = field(default_factory=list)

    @property
    def final_iou(self) -> float:
        return self.ious[-1] if self.ious else float("nan")


def run_clicks(engine, truth: np.ndarray, max_clicks: int = 20, ignore: np.ndarray | None = None,
               start: np.ndarray | None = None, stop_at: float | None = None, min_clicks: int = 0) -> ClickRun:
    """Run the click robot against a prepared ``engine`` for one object (region label 1).

    ``start`` is a mask to correct (e.g. the model's prediction), else the object starts empty.
    Stops after ``max_clicks`` clicks, or once IoU >= ``stop_at`` with at least ``min_clicks``
    done. ``ious`` has one value per click; once no error is left the last value repeats.
    """
    from napari_hitl.evaluate.metrics import iou
    from napari_hitl.prompts import RegionPrompts

    truth = np.asarray(truth, bool)
    pred = np.zeros(truth.shape, bool) if start is None else np.asarray(start, bool).copy()
    run = ClickRun(pred)
    if start is not None and stop_at is not None and iou(pred, truth, ignore) >= stop_at and min_clicks == 0:
        return run
    region = RegionPrompts(1)
    for k in range(max_clicks):
        click = next_click(pred, truth, ignore)
        if click is None:
            run.ious.append(run.ious[-1] if run.ious else 1.0)
            continue
        region.clicks.append(click)
        if not region.has_positive and not pred.any():
            run.ious.append(0.0)  # a negative click alone says nothing yet
            continue
        t0 = time.perf_counter()
        pred = engine.predict(region, prev_mask=pred if pred.any() else None) > 0
        run.ms.append((time.perf_counter() - t0) * 1000.0)
        run.ious.append(iou(pred, truth, ignore))
        if stop_at is not None and run.ious[-1] >= stop_at and k + 1 >= min_clicks:
            break
    run.mask, run.clicks = pred, region.clicks
    return run

