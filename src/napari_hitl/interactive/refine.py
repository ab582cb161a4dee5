"""Native-resolution finishing of a click engine's logits: edge snapping and click obedience.

The click network sees a crop resized to ``CROP_SIZE`` and answers at a quarter of that, so
on a large object one logit covers several image pixels and pasted logits blur the boundary.
:func:`snap_to_edges` re-fits the boundary band to the image's own edges at native resolution
with a guided filter (the output is locally an affine function of the image, so edges of the
probability follow edges of the image). :func:`obey_clicks` makes every click hold: where a
positive click ends outside the mask (or a negative one inside), the part it lands on is
found by a seeded watershed on the image gradient, the click's seed against the confident
pixels of the other side and the other side's prompts, and that whole part changes side, not
just a disk around the click. Both work in place on the HxW logits, only within a box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.prompts import RegionPrompts

__all__ = ["ImageCues", "snap_to_edges", "obey_clicks", "band_box", "CONFIDENT", "SEED_RADIUS"]

#: |logit| above which the network's answer seeds the watershed as certain
CONFIDENT = 3.0
#: radius (image pixels) of a click's seed disk in the watershed
SEED_RADIUS = 2
#: logit given to pixels a click moves across the boundary
MOVED_LOGIT = 2.0
#: longest side (pixels) on which the watershed runs; larger boxes are solved at reduced scale
MAX_WATERSHED_SIDE = 640


@dataclass
class ImageCues:
    """Per-image low-level cues at native resolution, computed once in ``prepare``: the guide
    (grey, float32 in [0, 1]) and the gradient magnitude (uint8, the watershed's relief)."""

    guide: np.ndarray
    gradient: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray) -> "ImageCues":
        """Cues of a float RGB (HxWx3) or grey (HxW) image in [0, 1]."""
        import cv2

        img = np.asarray(image, np.float32)
        if img.ndim == 3:
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.shape[2] == 3 else img.mean(axis=2)
        elif img.ndim == 2:
            grey = img
        else:
            raise InputError(f"image cues need an HxW or HxWx3 image, got shape {img.shape}")
        grey = np.ascontiguousarray(grey, np.float32)
        src = img if img.ndim == 3 else grey
        gx = cv2.Sobel(src, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(src, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.sqrt(gx * gx + gy * gy)
        if mag.ndim == 3:
            mag = mag.max(axis=2)
        scale = float(np.percentile(mag, 99.5)) or 1.0
        grad = np.clip(mag * (255.0 / scale), 0, 255).astype(np.uint8)
        return cls(guide=grey, gradient=grad)


def band_box(logits: np.ndarray, band: float, pad: int) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the pixels with |logit| < ``band``, grown by ``pad``; None if none."""
    near = np.abs(logits) < band
    rows = np.flatnonzero(near.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(near.any(axis=0))
    h, w = logits.shape
    return (max(int(rows[0]) - pad, 0), max(int(cols[0]) - pad, 0),
            min(int(rows[-1]) + 1 + pad, h), min(int(cols[-1]) + 1 + pad, w))


def snap_to_edges(logits: np.ndarray, cues: ImageCues, radius: int, eps: float = 1e-3,
                  band: float = 4.0, subsample: int | None = None) -> None:
    """In place: guided-filter the probability of the boundary band (|logit| < ``band``) with the
    grey image as guide (window ``2 * radius + 1``, regularisation ``eps``) and write the result
    back as logits there; pixels outside the band keep the network's answer.

    The filter's local linear coefficients are fitted on a grid ``subsample`` times coarser
    (default ``radius // 4``: the fast guided filter of He and Sun, 2015) and applied to the
    full-resolution guide, so edges stay at native resolution while the box filters cost
    ``subsample**2`` times less; ``subsample=1`` is the exact filter."""
    import cv2

    if logits.shape != cues.guide.shape:
        raise InputError(f"logits of shape {logits.shape} do not match the image's {cues.guide.shape}")
    radius = int(radius)
    if radius < 1:
        return
    box = band_box(logits, band, 2 * radius)
    if box is None:
        return
    y0, x0, y1, x1 = box
    lg = logits[y0:y1, x0:x1]
    guide = cues.guide[y0:y1, x0:x1]
    p = 1.0 / (1.0 + np.exp(-np.clip(lg, -30, 30)))
    s = max(1, radius // 4) if subsample is None else max(1, int(subsample))
    h, w = guide.shape
    if s > 1 and min(h, w) >= 4 * s:
        size = (max(1, round(w / s)), max(1, round(h / s)))
        g_s = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
        p_s = cv2.resize(p.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        r = max(1, round(radius / s))
    else:
        s, g_s, p_s, r = 1, guide, p.astype(np.float32), radius
    k = (2 * r + 1, 2 * r + 1)

    def box_mean(a):
        return cv2.boxFilter(a, cv2.CV_32F, k, normalize=True, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box_mean(g_s), box_mean(p_s)
    cov_ip = box_mean(g_s * p_s) - mean_i * mean_p
    var_i = box_mean(g_s * g_s) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    mean_a, mean_b = box_mean(a), box_mean(b)
    if s > 1:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    q = np.clip(mean_a * guide + mean_b, 1e-4, 1 - 1e-4)
    snapped = np.log(q / (1 - q)).astype(np.float32)
    inband = np.abs(lg) < band
    lg[inband] = snapped[inband]


def _disk_seeds(markers: np.ndarray, points: np.ndarray, value: int, origin: tuple[int, int], scale: float,
                radius: int) -> None:
    import cv2

    oy, ox = origin
    for y, x in np.asarray(points, np.float64).reshape(-1, 2):
        cy, cx = (y - oy) / scale, (x - ox) / scale
        if -radius <= cy < markers.shape[0] + radius and -radius <= cx < markers.shape[1] + radius:
            cv2.circle(markers, (int(round(cx)), int(round(cy))), radius, value, -1)


def _scribble_seeds(markers: np.ndarray, scribbles, value: int, origin: tuple[int, int], scale: float) -> None:
    import cv2

    oy, ox = origin
    for s in scribbles:
        pts = np.round((np.asarray(s.points, np.float64) - (oy, ox)) / scale)[:, ::-1].astype(np.int32)
        cv2.polylines(markers, [pts.reshape(-1, 1, 2)], False, value, 1)


def obey_clicks(logits: np.ndarray, cues: ImageCues, region: RegionPrompts,
                others: Sequence[RegionPrompts] = (), box: tuple[int, int, int, int] | None = None,
                confident: float = CONFIDENT, sweep: bool = False, reach: float = 0.0) -> int:
    """In place: make every click of ``region`` hold. For each violated click (a positive click
    whose pixel has logit <= 0, a negative click whose pixel has logit > 0), a seeded watershed on
    the gradient inside ``box`` (default: the whole image) decides which pixels on the click's
    wrong side belong with it: seeds are the click against the confident pixels of the other
    side (|logit| > ``confident``) and the prompts of that side (the region's other clicks and
    scribbles; the other regions' positives count as negatives).

    ``sweep``: every negative click, violated or not, removes the whole false part it lands on:
    the mask pixels the watershed gives to the negative clicks against the positive prompts
    alone (the network's own confidence is what failed there), the flood starting from the
    click's neighbourhood of radius ``reach`` pixels (the hole the network cut around it).
    Returns the number of clicks that were violated."""
    import cv2
    from skimage.segmentation import watershed

    h, w = logits.shape
    if cues.gradient.shape != (h, w):
        raise InputError(f"logits of shape {logits.shape} do not match the image's {cues.gradient.shape}")
    violated = []
    for c in region.clicks:
        y, x = int(round(c.y)), int(round(c.x))
        if not (0 <= y < h and 0 <= x < w):
            raise InputError(f"click at ({c.y}, {c.x}) is outside the image of shape {(h, w)}")
        if (logits[y, x] > 0) != c.positive:
            violated.append(c)
    sweeping = sweep and any(not c.positive for c in region.clicks)
    if not violated and not sweeping:
        return 0
    y0, x0, y1, x1 = box if box is not None else (0, 0, h, w)
    side = max(y1 - y0, x1 - x0)
    scale = max(1.0, side / MAX_WATERSHED_SIDE)
    lg = logits[y0:y1, x0:x1]
    grad = cues.gradient[y0:y1, x0:x1]
    if scale > 1.0:
        size = (max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale)))
        lg_s = cv2.resize(lg, size, interpolation=cv2.INTER_AREA)
        grad_s = cv2.resize(grad, size, interpolation=cv2.INTER_AREA)
    else:
        lg_s, grad_s = lg, grad
    neg_pts = np.array([[c.y, c.x] for c in region.clicks if not c.positive]).reshape(-1, 2)
    pos_pts = region.positive_points()
    other_pos = [o.positive_points() for o in others if o is not region]
    other_pos = np.concatenate(other_pos) if other_pos else np.zeros((0, 2))
    radius = max(1, int(round(SEED_RADIUS / scale)))
    for positive in (True, False):
        swept = sweeping and not positive
        clicks = [c for c in (region.clicks if swept else violated) if c.positive == positive]
        if not clicks:
            continue
        # the click's side: 1; the other side: 2; the watershed floods only the wrong side
        wrong = lg_s <= 0 if positive else lg_s > 0
        markers = np.zeros(lg_s.shape, np.int32)
        if swept:
            near = np.zeros(lg_s.shape, np.int32)
            _disk_seeds(near, np.array([[c.y, c.x] for c in clicks]), 1, (y0, x0), scale,
                        max(radius, int(round(reach / scale))))
            wrong = wrong | (near > 0)
        else:
            markers[(lg_s < -confident) if positive else (lg_s > confident)] = 2
        if positive:
            _disk_seeds(markers, np.concatenate([neg_pts, other_pos]), 2, (y0, x0), scale, radius)
            _scribble_seeds(markers, [s for s in region.scribbles if not s.positive], 2, (y0, x0), scale)
        else:
            _disk_seeds(markers, pos_pts, 2, (y0, x0), scale, radius)
            _scribble_seeds(markers, [s for s in region.scribbles if s.positive], 2, (y0, x0), scale)
        _disk_seeds(markers, np.array([[c.y, c.x] for c in clicks]), 1, (y0, x0), scale, radius)
        markers[~wrong & (markers == 2)] = 0  # seeds only where the flood runs
        mask = wrong | (markers == 1)
        flood = watershed(grad_s, markers, mask=mask)
        take = flood == 1
        if scale > 1.0:
            take = cv2.resize(take.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
            take &= (lg <= 0) if positive else (lg > 0)
        if positive:
            lg[take] = np.maximum(lg[take], MOVED_LOGIT)
        else:
            lg[take] = np.minimum(lg[take], -MOVED_LOGIT)
        # the click pixel itself always ends on its side
        for c in clicks:
            y, x = int(round(c.y)), int(round(c.x))
            logits[y, x] = max(logits[y, x], MOVED_LOGIT) if positive else min(logits[y, x], -MOVED_LOGIT)
    return len(violated)

