"""SLIC superpixels, their uncertainty, and class-balanced suggestions of what to label.

A suggestion is one superpixel with its predicted class: the person accepts it with one
click or relabels it. Scores average a pixel uncertainty map inside each superpixel,
optionally weighting pixels on image edges higher (edges are where models go wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError

__all__ = ["slic_superpixels", "edge_strength", "superpixel_stats", "class_votes", "expected_fix_clicks", "Suggestion",
           "image_suggestions", "suggest_superpixels", "diverse_suggestions"]


def slic_superpixels(image: np.ndarray, n_segments: int = 200, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels of a gray or RGB image: ``(H, W)`` int32 ids 0..K-1 (K about ``n_segments``)."""
    from skimage.segmentation import slic

    from napari_hitl.io import as_float_rgb

    if n_segments < 1:
        raise InputError(f"n_segments must be >= 1, got {n_segments}")
    img = as_float_rgb(image)
    seg = slic(img, n_segments=int(n_segments), compactness=float(compactness), start_label=0,
               channel_axis=-1, enforce_connectivity=True)
    # make ids consecutive (SLIC may leave gaps)
    _, seg = np.unique(seg, return_inverse=True)
    return seg.reshape(img.shape[:2]).astype(np.int32)


def edge_strength(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the gray image scaled to [0, 1] (99th percentile = 1)."""
    from scipy import ndimage

    from napari_hitl.io import as_float_rgb

    gray = as_float_rgb(image).mean(2)
    mag = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    top = np.percentile(mag, 99)
    return np.clip(mag / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(gray, np.float32)


def superpixel_stats(segments: np.ndarray, uncertainty: np.ndarray, pred: np.ndarray, num_classes: int,
                     edges: np.ndarray | None = None, edge_weight: float = 0.0):
    """Per superpixel: (score, predicted class, area, purity of the prediction).

    score = weighted mean uncertainty with pixel weight ``1 + edge_weight * edges``;
    predicted class = majority arg-max class; purity = its share of the superpixel.
    """
    seg = np.asarray(segments).ravel().astype(np.int64)
    k = int(seg.max()) + 1 if seg.size else 0
    u = np.asarray(uncertainty, np.float64).ravel()
    w = np.ones_like(u) if edges is None or edge_weight == 0 else 1.0 + edge_weight * np.asarray(edges).ravel()
    area = np.bincount(seg, minlength=k).astype(np.int64)
    score = np.bincount(seg, weights=u * w, minlength=k) / np.maximum(np.bincount(seg, weights=w, minlength=k), 1e-12)
    votes = class_votes(segments, pred, num_classes)
    cls = votes.argmax(1)
    purity = votes.max(1) / np.maximum(area, 1)
    return score, cls, area, purity


def class_votes(segments: np.ndarray, labels: np.ndarray, num_classes: int, where: np.ndarray | None = None) -> np.ndarray:
    """``(K, num_classes)`` pixel counts of each class in each superpixel (only ``where`` pixels, if given)."""
    seg = np.asarray(segments).ravel().astype(np.int64)
    lab = np.asarray(labels).ravel().astype(np.int64)
    k = int(seg.max()) + 1 if seg.size else 0
    if where is not None:
        keep = np.asarray(where).ravel()
        seg, lab = seg[keep], lab[keep]
    return np.bincount(seg * num_classes + lab, minlength=k * num_classes).reshape(k, num_classes)


def expected_fix_clicks(segments: np.ndarray, pred: np.ndarray, conf: np.ndarray, num_classes: int) -> float:
    """Expected clicks to answer an image by superpixel fixes, from its prediction alone.

    One click accepts every right superpixel, each wrong one costs a click. A superpixel's
    voted class counts as right with the mean confidence of its pixels that predict it (the
    other pixels add nothing), so a superpixel the model splits or doubts is likely a click.
    """
    seg = np.asarray(segments)
    pred, conf = np.asarray(pred), np.asarray(conf, np.float64)
    if not (seg.shape == pred.shape == conf.shape):
        raise InputError(f"superpixels {seg.shape}, prediction {pred.shape} and confidence {conf.shape} differ in shape")
    if seg.size == 0:
        return 1.0
    cls = class_votes(seg, pred, num_classes).argmax(1)
    flat = seg.ravel().astype(np.int64)
    agree = pred.ravel() == cls[flat]
    area = np.bincount(flat, minlength=len(cls))
    right = np.bincount(flat, weights=conf.ravel() * agree, minlength=len(cls)) / np.maximum(area, 1)
    return 1.0 + float((1.0 - right)[area > 0].sum())


@dataclass
class Suggestion:
    """One superpixel to show the person: accept its ``predicted_class`` or relabel it."""

    image_index: int
    segment: int            # superpixel id in that image's segment map
    score: float            # mean uncertainty (higher = more useful)
    predicted_class: int
    area: int


def image_suggestions(image_index: int, segments: np.ndarray, uncertainty: np.ndarray, pred: np.ndarray,
                      num_classes: int, edges: np.ndarray | None = None, edge_weight: float = 0.0,
                      min_area: int = 16, exclude=()) -> list[Suggestion]:
    """All candidate superpixels of one image (at least ``min_area`` px, ids not in ``exclude``)."""
    score, cls, area, _ = superpixel_stats(segments, uncertainty, pred, num_classes, edges, edge_weight)
    skip = set(int(i) for i in exclude)
    return [Suggestion(image_index, int(i), float(score[i]), int(cls[i]), int(area[i]))
            for i in range(len(score)) if area[i] >= min_area and i not in skip]


def suggest_superpixels(candidates: list[Suggestion], k: int, class_balanced: bool = True) -> list[Suggestion]:
    """The ``k`` most uncertain candidates; with ``class_balanced`` taken round-robin per predicted class.

    Balancing stops frequent classes (sky, background) from starving rare ones.
    """
    if k <= 0 or not candidates:
        return []
    ranked = sorted(candidates, key=lambda s: -s.score)
    if not class_balanced:
        return ranked[:k]
    by_class: dict[int, list[Suggestion]] = {}
    for s in ranked:
        by_class.setdefault(s.predicted_class, []).append(s)
    queues = sorted(by_class.values(), key=lambda q: -q[0].score)
    out: list[Suggestion] = []
    pos = [0] * len(queues)
    while len(out) < k and any(p < len(q) for p, q in zip(pos, queues)):
        for j, q in enumerate(queues):
            if pos[j] < len(q) and len(out) < k:
                out.append(q[pos[j]])
                pos[j] += 1
    return out


def diverse_suggestions(candidates: list[Suggestion], features: np.ndarray, k: int, first_round: bool = False,
                        seed: int = 0) -> list[Suggestion]:
    """Diversity picks among superpixels: k-means over their pooled features (one row per candidate).

    First round: all candidates are clustered; later: the more uncertain half only. The
    candidate nearest each centre is returned.
    """
    from napari_hitl.active.ranking import diversity_pick

    if len(features) != len(candidates):
        raise InputError(f"need one feature row per candidate ({len(candidates)}), got {len(features)}")
    if k <= 0 or not candidates:
        return []
    order = np.argsort([-c.score for c in candidates], kind="stable")
    pool = order if first_round else order[:max(k, (len(order) + 1) // 2)]
    picked = diversity_pick(features, k, pool, seed)
    return [candidates[i] for i in picked]
