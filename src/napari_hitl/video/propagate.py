"""Spread a few labelled units to every frame by plain label propagation along optical flow (the
baseline the fine-tuned model is measured against), and the working-resolution geometry the
video code shares.

Label maps of a video mark pixels without a human label with :data:`NO_LABEL` (-1): class 0 is
a real class there, and a video keeps no provenance map. Where labels come from the project
store, a pixel has no label exactly when its provenance is ``UNLABELLED``
(:func:`human_labels` converts).
"""

from __future__ import annotations

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.project import KEPT
from napari_hitl.video.flow import FlowCache, warp

#: label value of a pixel no human has labelled (provenance UNLABELLED in the project store)
NO_LABEL = -1


def human_labels(labels: np.ndarray, provenance: np.ndarray) -> np.ndarray:
    """The store's labels as a video label map: a person's (or a simulated person's) pixels keep
    their class, every other pixel is :data:`NO_LABEL`."""
    return np.where(np.isin(provenance, KEPT), labels, NO_LABEL).astype(np.int16)


# -- geometry --------------------------------------------------------------------------------
def working_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Frame size used for flow and the model: ``shape * scale`` rounded to multiples of 32."""
    if not scale > 0:
        raise InputError(f"scale must be positive, got {scale}")
    h, w = shape
    return max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)


def resize_frames(frames, shape: tuple[int, int]) -> np.ndarray:
    """Resize every frame (area interpolation) to ``shape``; returns a (T, h, w[, 3]) array."""
    import cv2

    out = []
    for f in frames:
        f = np.asarray(f)
        out.append(f if f.shape[:2] == tuple(shape) else
                   cv2.resize(f, (shape[1], shape[0]), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of one (H, W) or a stack (T, H, W) of label maps (-1 kept)."""
    import cv2

    labels = np.asarray(labels)
    if labels.ndim == 3:
        return np.stack([resize_labels(lab, shape) for lab in labels])
    if labels.shape == tuple(shape):
        return labels
    small = cv2.resize(labels.astype(np.int16), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return small.astype(labels.dtype)


def upsample_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, h, w) probabilities to (C, H, W)."""
    import cv2

    p = np.asarray(probs, np.float32)
    if p.shape[1:] == tuple(shape):
        return p
    return np.stack([cv2.resize(c, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for c in p])


# -- the baseline: label propagation ------------------------------------------------------------
def propagate_labels(labels: np.ndarray, flows: FlowCache, fill: bool = True,
                     fallback: int = 0) -> np.ndarray:
    """Carry labelled pixels to every frame along the flow (the baseline).

    ``labels``: (T, H, W) ints, -1 where unlabelled, at the flows' resolution. Each
    unlabelled pixel takes the label of the nearest (in time) labelled frame, chained
    frame by frame through one-frame flows and only across trusted (forward-backward
    consistent) pixels; what stays unlabelled (occlusions, areas nobody labelled) takes the
    nearest labelled pixel of its frame (``fill``), or ``fallback`` if its frame has none.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be (T, H, W), got shape {labels.shape}")
    if len(labels) != len(flows):
        raise InputError(f"{len(labels)} label frames for a video of {len(flows)} frames")
    known = labels >= 0
    big = np.float32(1e9)
    age0 = np.where(known, 0, big).astype(np.float32)

    def sweep(order):
        lab, age = labels.copy(), age0.copy()
        for prev, t in zip(order[:-1], order[1:]):
            if not (age[prev] < big).any():
                continue
            fl = flows.flow(t, prev)
            cand_lab = warp(lab[prev], fl, nearest=True)
            cand_age = warp(age[prev], fl, nearest=True) + 1
            better = flows.trusted(t, prev) & (cand_age < age[t]) & (cand_lab >= 0)
            lab[t][better], age[t][better] = cand_lab[better], cand_age[better]
        return lab, age

    n = len(labels)
    fwd, fage = sweep(list(range(n)))
    bwd, bage = sweep(list(range(n - 1, -1, -1)))
    out = np.where(fage <= bage, fwd, bwd)
    if fill:
        out = np.stack([fill_nearest(f, fallback) for f in out])
    return out


def fill_nearest(labels: np.ndarray, fallback: int = 0) -> np.ndarray:
    """Give every unlabelled (-1) pixel the label of the nearest labelled pixel (``fallback`` if none)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    unknown = labels < 0
    if not unknown.any():
        return labels
    if unknown.all():
        return np.full_like(labels, fallback)
    idx = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


# -- the temporal-consistency term ------------------------------------------------------------
