"""Annotation cost in clicks, as a person drawing polygons would spend them.

Each connected component of a class is traced as a polygon: its vertex count after
Ramer-Douglas-Peucker simplification (``tolerance`` pixels) is the number of boundary clicks,
plus one click to name the class. Inside a sample (a rectangle or a superpixel) the sample's
own border costs nothing: only the parts of a component's outline inside the sample are
traced, the sample's largest class is named with one click as the fill of the rest, and a
sample holding a single class costs one click.
"""

from __future__ import annotations

import numpy as np

from napari_hitl.errors import InputError

__all__ = ["polygon_clicks", "sample_clicks", "image_clicks", "unit_clicks", "full_annotation_cost"]


def _components(mask: np.ndarray):
    import cv2

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        yield lab == k


def _outer_contour(comp: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) points of the outer boundary of one connected component."""
    import cv2

    contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=len).reshape(-1, 2)


def _polygon_vertices(contour: np.ndarray, tolerance: float, closed: bool = True) -> int:
    import cv2

    if len(contour) <= 2:
        return len(contour)
    approx = cv2.approxPolyDP(contour.reshape(-1, 1, 2).astype(np.int32), float(tolerance), closed)
    return int(len(approx))


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise InputError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    return labels


def polygon_clicks(labels: np.ndarray, tolerance: float = 1.0, ignore_index: int | None = None,
                   background: int | None = None) -> int:
    """Clicks to draw ``labels`` as polygons: per connected component of each class, its
    simplified outline's vertex count plus one to name the class.

    ``ignore_index`` pixels are not drawn. The ``background`` class, if given, is what the
    canvas starts as: its components touching the image edge cost nothing, enclosed ones
    (holes that must be cut out) cost like any polygon. A square on background: 4 + 1.
    """
    labels = _check(labels)
    total = 0
    h, w = labels.shape
    for c in np.unique(labels):
        if ignore_index is not None and c == ignore_index:
            continue
        for comp in _components(labels == c):
            if background is not None and c == background:
                if comp[0].any() or comp[-1].any() or comp[:, 0].any() or comp[:, -1].any():
                    continue
            total += _polygon_vertices(_outer_contour(comp), tolerance) + 1
    return int(total)


def _runs_off_border(contour: np.ndarray, on_border: np.ndarray) -> list[np.ndarray]:
    """Split a closed contour into the runs of points not on the sample's border."""
    if on_border.all():
        return []
    if not on_border.any():
        return [contour]
    start = int(np.flatnonzero(on_border)[0])  # rotate so the contour starts on the border
    contour, on_border = np.roll(contour, -start, 0), np.roll(on_border, -start)
    runs, cur = [], []
    for p, b in zip(contour, on_border):
        if b:
            if cur:
                runs.append(np.array(cur))
                cur = []
        else:
            cur.append(p)
    if cur:
        runs.append(np.array(cur))
    return runs


def sample_clicks(labels_in_sample: np.ndarray, sample_mask: np.ndarray, tolerance: float = 1.0,
                  ignore_index: int | None = None) -> int:
    """Clicks to label one sample (a rectangle or superpixel, ``sample_mask``) of ``labels``.

    One click names the sample's largest class as the fill; every component of the other
    classes is traced only where its outline runs inside the sample (the sample's border is
    free), simplified, plus one click to name it. A single-class sample costs 1; an empty
    (or all-ignored) sample costs 0.
    """
    import cv2

    labels = _check(labels_in_sample)
    sample = np.asarray(sample_mask, bool)
    if sample.shape != labels.shape:
        raise InputError(f"sample mask shape {sample.shape} differs from labels shape {labels.shape}")
    scored = sample.copy()
    if ignore_index is not None:
        scored &= labels != ignore_index
    if not scored.any():
        return 0
    classes, counts = np.unique(labels[scored], return_counts=True)
    if len(classes) == 1:
        return 1
    fill = classes[int(np.argmax(counts))]
    # pixels of the sample next to its outside (or the image edge): outlines there are free
    pad = np.pad(sample, 1).astype(np.uint8)
    border = (cv2.erode(pad, np.ones((3, 3), np.uint8)) == 0)[1:-1, 1:-1] & sample
    total = 1
    for c in classes:
        if c == fill:
            continue
        for comp in _components((labels == c) & sample):
            contour = _outer_contour(comp)
            on_border = border[contour[:, 1], contour[:, 0]]
            runs = _runs_off_border(contour, on_border)
            closed = not on_border.any()
            total += sum(_polygon_vertices(r, tolerance, closed=closed) for r in runs) + 1
    return int(total)


def image_clicks(labels: np.ndarray, tolerance: float = 1.0, ignore_index: int | None = None) -> int:
    """Clicks to label a whole frame, counted like a rectangle sample covering the image."""
    labels = _check(labels)
    return sample_clicks(labels, np.ones(labels.shape, bool), tolerance, ignore_index)


def unit_clicks(units, index: int, truth_frame: np.ndarray) -> int:
    """Clicks to label unit ``index`` of a :class:`~napari_hitl.video.units.UnitSet` from the true
    labels of its frame: a whole frame is traced, any other unit costs as a sample."""
    if units.kind == "frame":
        return int(image_clicks(np.asarray(truth_frame)))
    bbox, local = units.local_mask(index)
    y0, x0, y1, x1 = bbox
    return int(sample_clicks(np.asarray(truth_frame)[y0:y1, x0:x1], local))


def full_annotation_cost(truth, progress=None) -> int:
    """Clicks to label every frame of ``truth`` (T, H, W) completely: the 100% of click budgets."""
    total = 0
    for t, lab in enumerate(truth):
        total += int(image_clicks(np.asarray(lab)))
        if progress is not None:
            progress(t + 1, len(truth))
    return total
