"""Segmentation metrics: IoU, mean IoU over classes, pixel accuracy, boundary IoU, NoC and IoU@k,
and for objects (instance maps, 0 = no object) F1 at an IoU threshold, the DSB2018 average
precision over IoU 0.5:0.95 and the aggregated Jaccard index.

Masks are bool HxW arrays; label maps are integer HxW arrays. ``ignore`` masks (e.g. the
GrabCut 128 band) and ``ignore_index`` values (e.g. CamVid void) are left out of every score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_hitl.errors import InputError

__all__ = ["iou", "mean_iou", "confusion_matrix", "pixel_accuracy", "boundary_band", "boundary_iou",
           "boundary_map", "boundary_f", "j_and_f", "noc", "iou_at_k", "instance_iou", "object_f1", "average_precision", "aggregated_jaccard"]


def _pair(pred, truth, what="pred") -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(f"{what} has shape {pred.shape} but truth has shape {truth.shape}")
    return pred, truth


def iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two bool masks, ignored pixels excluded; 1.0 if both are empty."""
    pred, truth = _pair(pred, truth)
    pred, truth = pred.astype(bool), truth.astype(bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        pred, truth = pred & keep, truth & keep
    union = np.count_nonzero(pred | truth)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & truth) / union)


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = truth, columns = prediction."""
    pred, truth = _pair(pred, truth)
    p = pred.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    p, t = p[keep], t[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise InputError(f"prediction holds class {int(p.max() if p.max() >= num_classes else p.min())} "
                         f"outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(pred: np.ndarray, truth: np.ndarray, num_classes: int | None = None,
             ignore_index: int | None = None, per_class: bool = False):
    """Mean IoU over the classes present in ``truth`` or ``pred`` (ignore_index pixels left out).

    With ``per_class=True`` returns (mean, {class: iou}).
    """
    pred, truth = _pair(pred, truth)
    if num_classes is None:
        num_classes = int(max(pred.max(initial=0), truth.max(initial=0))) + 1
    cm = confusion_matrix(pred, truth, num_classes, ignore_index)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    classes = [c for c in range(num_classes) if union[c] > 0 and c != ignore_index]
    ious = {c: float(inter[c] / union[c]) for c in classes}
    mean = float(np.mean(list(ious.values()))) if ious else 1.0
    return (mean, ious) if per_class else mean


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray, ignore_index: int | None = None,
                   ignore: np.ndarray | None = None) -> float:
    """Share of scored pixels whose predicted label equals the true one."""
    pred, truth = _pair(pred, truth)
    keep = np.ones(truth.shape, bool)
    if ignore_index is not None:
        keep &= truth != ignore_index
    if ignore is not None:
        keep &= ~np.asarray(ignore, bool)
    n = np.count_nonzero(keep)
    return 1.0 if n == 0 else float(np.count_nonzero((pred == truth) & keep) / n)


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (the image edge is not a border)."""
    import cv2

    m = np.asarray(mask, bool).astype(np.uint8)
    if width < 1:
        raise InputError(f"band width must be >= 1, got {width}")
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    eroded = cv2.erode(m, k, borderType=cv2.BORDER_REPLICATE)
    return (m > 0) & (eroded == 0)


def boundary_iou(pred: np.ndarray, truth: np.ndarray, dilation_ratio: float = 0.02,
                 ignore: np.ndarray | None = None) -> float:
    """Boundary IoU: IoU of the bands of width d (``dilation_ratio`` x image diagonal, at least
    1 px) inside both masks' boundaries; sensitive to edge quality where plain IoU is not."""
    pred, truth = _pair(pred, truth)
    h, w = truth.shape
    d = max(1, int(round(dilation_ratio * np.hypot(h, w))))
    return iou(boundary_band(pred, d), boundary_band(truth, d), ignore)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide inner boundary of a bool mask: its pixels with a 4-neighbour outside it (the
    image edge is not a border, as in :func:`boundary_band`)."""
    import cv2

    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise InputError(f"a mask must be HxW, got shape {m.shape}")
    k = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return m & (cv2.erode(m.astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE) == 0)


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: float = 0.008) -> float:
    """The DAVIS contour accuracy F: F-measure of boundary precision and recall, a boundary pixel
    counting as matched when the other mask's boundary lies within ``tolerance`` x the image
    diagonal (at least 1 px; 0.008 is the DAVIS setting). 1.0 when both masks are empty, 0.0
    when only one is."""
    import cv2

    pred, truth = _pair(pred, truth)
    if not tolerance >= 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}")
    bp, bt = boundary_map(pred), boundary_map(truth)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    r = max(1, int(np.ceil(tolerance * np.hypot(*truth.shape))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near_t = cv2.dilate(bt.astype(np.uint8), disk) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), disk) > 0
    precision = np.count_nonzero(bp & near_t) / n_p
    recall = np.count_nonzero(bt & near_p) / n_t
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def j_and_f(pred: np.ndarray, truth: np.ndarray, obj: int = 1, tolerance: float = 0.008) -> dict:
    """DAVIS region and contour scores of one object over a sequence: ``pred`` and ``truth`` are
    (T, H, W) label maps (or one HxW map); J is the object's IoU per frame (background not
    pooled in), F is :func:`boundary_f` per frame; each is the mean over frames, J&F their mean.
    Returns {'J', 'F', 'J&F', 'J_frames', 'F_frames'}."""
    pred, truth = _pair(pred, truth)
    if pred.ndim == 2:
        pred, truth = pred[None], truth[None]
    if pred.ndim != 3 or len(pred) == 0:
        raise InputError(f"j_and_f needs (T, H, W) label maps with T >= 1, got shape {pred.shape}")
    js = [iou(p == obj, t == obj) for p, t in zip(pred, truth)]
    fs = [boundary_f(p == obj, t == obj, tolerance) for p, t in zip(pred, truth)]
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "J_frames": js, "F_frames": fs}


def noc(ious: Sequence[float], threshold: float = 0.9, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold`` IoU; ``ious[k]`` is the IoU after k+1 clicks.

    Returns ``max_clicks`` when the curve never reaches it within ``max_clicks`` clicks.
    """
    for k, v in enumerate(list(ious)[:max_clicks]):
        if v >= threshold:
            return k + 1
    return int(max_clicks)


def iou_at_k(ious: Sequence[float], k: int) -> float:
    """IoU after ``k`` clicks (the last value if the run stopped earlier, its IoU then being final)."""
    ious = list(ious)
    if k < 1 or not ious:
        raise InputError(f"iou_at_k needs k >= 1 and a non-empty curve, got k={k}, {len(ious)} values")
    return float(ious[min(k, len(ious)) - 1])


def instance_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows, ids in increasing order) with every predicted one (columns)."""
    pred, truth = _pair(pred, truth)
    for name, arr in (("pred", pred), ("truth", truth)):
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0):
            raise InputError(f"{name} must be an instance map of non-negative integers, got {arr.dtype}")
    t_ids, t_inv = np.unique(truth.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    inter = np.bincount(t_inv * len(p_ids) + p_inv, minlength=len(t_ids) * len(p_ids)).reshape(len(t_ids), -1)
    t_area, p_area = inter.sum(1), inter.sum(0)
    t_keep, p_keep = t_ids != 0, p_ids != 0
    inter = inter[t_keep][:, p_keep]
    union = t_area[t_keep][:, None] + p_area[p_keep][None, :] - inter
    return inter / np.maximum(union, 1)


def _matches(ious: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) at IoU > ``threshold`` (>= 0.5: one-to-one)."""
    if threshold < 0.5:
        raise InputError(f"matching by IoU is one-to-one only from 0.5 on, got {threshold}")
    tp = int(np.count_nonzero(ious > threshold))
    n_true, n_pred = ious.shape
    return tp, n_pred - tp, n_true - tp


def object_f1(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of object detection: an object is found when a prediction overlaps it with IoU above
    ``threshold``; 1.0 when there are no objects and none predicted."""
    tp, fp, fn = _matches(instance_iou(pred, truth), threshold)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def average_precision(pred: np.ndarray, truth: np.ndarray,
                      thresholds: Sequence[float] = tuple(np.arange(0.5, 1.0, 0.05))) -> float:
    """The Data Science Bowl 2018 score: TP / (TP + FP + FN) averaged over IoU thresholds 0.5:0.95."""
    ious = instance_iou(pred, truth)
    scores = []
    for t in thresholds:
        tp, fp, fn = _matches(ious, float(t))
        scores.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return float(np.mean(scores))


def aggregated_jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017): each true object with its best-overlapping
    prediction, intersections over unions summed, predictions matched by none added to the union."""
    pred, truth = _pair(pred, truth)
    ious = instance_iou(pred, truth)
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    if len(t_ids) == 0:
        return 1.0 if len(p_ids) == 0 else 0.0
    t_area = np.array([np.count_nonzero(truth == i) for i in t_ids])
    p_area = np.array([np.count_nonzero(pred == i) for i in p_ids])
    inter_total = union_total = 0
    used = np.zeros(len(p_ids), bool)
    for r in range(len(t_ids)):
        if len(p_ids) == 0 or ious[r].max() == 0:
            union_total += t_area[r]
            continue
        j = int(ious[r].argmax())
        inter = np.count_nonzero((truth == t_ids[r]) & (pred == p_ids[j]))
        inter_total += inter
        union_total += t_area[r] + p_area[j] - inter
        used[j] = True
    union_total += int(p_area[~used].sum())
    return float(inter_total / max(union_total, 1))
