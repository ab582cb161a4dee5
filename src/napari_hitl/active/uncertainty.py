"""Per-pixel uncertainty maps from ``(C, H, W)`` class probabilities: confidence, entropy, margin.

These drive every "what should the human look at next" decision (image ranking,
superpixel suggestions, pseudo-label thresholds); all return ``(H, W)`` float32 maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_hitl.errors import InputError

__all__ = ["Prediction", "check_proba", "confidence", "entropy", "margin", "margin_uncertainty", "uncertainty_map",
           "MEASURES"]

#: names accepted by :func:`uncertainty_map`
MEASURES = ("entropy", "margin", "confidence")


def check_proba(proba: np.ndarray) -> np.ndarray:
    """Return ``proba`` as float32 ``(C, H, W)`` with C >= 2, or raise InputError."""
    p = np.asarray(proba)
    if p.ndim != 3 or p.shape[0] < 2:
        raise InputError(f"probabilities must have shape (C, H, W) with C >= 2, got {p.shape}")
    return p.astype(np.float32, copy=False)


def confidence(proba: np.ndarray) -> np.ndarray:
    """Largest class probability per pixel (1 = certain)."""
    return check_proba(proba).max(0)


def entropy(proba: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Shannon entropy (nats) of the class distribution per pixel; / log C when ``normalize``."""
    p = check_proba(proba)
    h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(0)
    if normalize:
        h = h / np.log(p.shape[0])
    return np.maximum(h, 0).astype(np.float32)


def _top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second-largest value per pixel of float32 ``(C, H, W)`` ``p`` (C >= 2).

    One pass of elementwise maxima / minima over the classes: the same values as sorting
    along the classes (a tie gives the tied value twice), without the sort, which was most of
    the cost of :func:`margin` for the few classes of a project."""
    if p.shape[0] == 2:
        return np.maximum(p[0], p[1]), np.minimum(p[0], p[1])
    top1 = np.maximum(p[0], p[1])
    top2 = np.minimum(p[0], p[1])
    low = np.empty_like(top1)
    for c in range(2, p.shape[0]):
        np.minimum(top1, p[c], out=low)
        np.maximum(top2, low, out=top2)
        np.maximum(top1, p[c], out=top1)
    return top1, top2


def margin(proba: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 class probability per pixel (0 = two classes tie)."""
    top1, top2 = _top2(check_proba(proba))
    return (top1 - top2).astype(np.float32, copy=False)


def margin_uncertainty(proba: np.ndarray) -> np.ndarray:
    """1 - margin: high where the two most likely classes are close."""
    return (1.0 - margin(proba)).astype(np.float32)


def uncertainty_map(proba: np.ndarray, measure: str = "margin") -> np.ndarray:
    """Uncertainty in [0, 1] by name: 'entropy' (normalised), 'margin' (1 - margin), 'confidence' (1 - conf)."""
    if measure == "entropy":
        return entropy(proba, normalize=True)
    if measure == "margin":
        return margin_uncertainty(proba)
    if measure == "confidence":
        return (1.0 - confidence(proba)).astype(np.float32)
    raise InputError(f"unknown uncertainty measure {measure!r}; use one of {', '.join(MEASURES)}")


@dataclass
class Prediction:
    """Derived maps of one image's prediction (kept instead of full probabilities)."""

    pred: np.ndarray          # (H, W) uint16 arg-max
    conf: np.ndarray          # (H, W) float32
    margin: np.ndarray        # (H, W) float32
    entropy: np.ndarray       # (H, W) float32, normalised
    features: np.ndarray | None = None  # encoder features: (D, h, w) maps, or (D,) pooled
    instances: np.ndarray | None = None  # (H, W) uint32 decoded objects (models with the instance head)
    classes: dict | None = None          # id -> class of ``instances``
    boundary: np.ndarray | None = None   # (H, W) float32 boundary probability of the instance head
    object_conf: np.ndarray | None = None  # per-id confidence of ``instances`` (index 0 unused)

    @classmethod
    def from_probs(cls, proba: np.ndarray, features: np.ndarray | None = None) -> Prediction:
        """The maps of ``(C, H, W)`` probabilities (the one conversion the loop and the dock share)."""
        p = check_proba(proba)
        top1, top2 = _top2(p)  # confidence and margin from one pass
        return cls(p.argmax(0).astype(np.uint16), top1, (top1 - top2).astype(np.float32, copy=False),
                   entropy(p, normalize=True), features)

    @classmethod
    def from_instance_maps(cls, stacked: np.ndarray, num_classes: int, features: np.ndarray | None = None,
                           stuff=(), **decode_kw) -> Prediction:
        """The maps of a ``with_instances`` prediction (C class probabilities, then boundary and
        distance), with its objects decoded and scored (:mod:`napari_hitl.active.objects`)."""
        from napari_hitl.active.objects import object_confidence
        from napari_hitl.model.instances import instances_from_maps

        arr = np.asarray(stacked)
        if arr.ndim != 3 or arr.shape[0] != num_classes + 2:
            raise InputError(f"expected ({num_classes} + 2, H, W) maps, got shape {arr.shape}")
        probs, boundary, distance = arr[:num_classes], arr[num_classes], arr[num_classes + 1]
        out = cls.from_probs(probs, features)
        out.instances, out.classes = instances_from_maps(probs, boundary, distance, stuff, **decode_kw)
        out.boundary = np.asarray(boundary, np.float32)
        out.object_conf = object_confidence(out.instances, out.conf, out.boundary)
        return out
