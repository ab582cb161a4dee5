"""Uncertainty and pseudo-labels per object, for instance maps.

An object's confidence is the mean class confidence inside it times its boundary certainty:
how decided the instance head's boundary map is over the object (``max(b, 1 - b)`` averaged;
a half-believed split line through an object, or a fuzzy outline, lowers it). Images are
ranked by their least certain objects (:func:`object_uncertainty`, the ``objects`` scorer of
:data:`napari_hitl.active.ranking.SCORERS`). Pseudo-labels go object by object: a confident
object is proposed whole, every pixel of it; an unsure one not at all (nor the background
ring around it), so the model never learns half an object.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_hitl.errors import InputError
from napari_hitl.model.instances import check_instances
from napari_hitl.model.train import ANSWERED, PSEUDO, UNLABELLED

__all__ = ["object_confidence", "object_uncertainty", "objects_from_prediction", "pseudo_instances"]


def _check_map(arr, shape, name: str) -> np.ndarray:
    a = np.asarray(arr, np.float32)
    if a.shape != tuple(shape):
        raise InputError(f"{name} has shape {a.shape}, expected {tuple(shape)} (the instance map's)")
    return a


def object_confidence(instances, conf, boundary=None) -> np.ndarray:
    """Confidence of every object: ``out[id]`` for ids 0..max (``out[0]`` is unused, 1.0).

    ``conf``: (H, W) largest class probability; ``boundary``: (H, W) boundary probability of
    the instance head, or None (then the class confidence alone).
    """
    inst = check_instances(instances)
    c = _check_map(conf, inst.shape, "confidence")
    n = int(inst.max(initial=0))
    flat = inst.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    score = np.bincount(flat, weights=c.ravel(), minlength=n + 1) / np.maximum(area, 1)
    if boundary is not None:
        b = _check_map(boundary, inst.shape, "boundary")
        sure = np.maximum(b, 1.0 - b).ravel()
        score = score * (np.bincount(flat, weights=sure, minlength=n + 1) / np.maximum(area, 1))
    score[area == 0] = 1.0
    score[0] = 1.0
    return score.astype(np.float32)


def object_uncertainty(confidences, k: int = 3) -> float:
    """Image score from per-object confidences (index 0 skipped): 1 - mean of the ``k`` lowest.

    High when the image holds unsure objects, whatever its sure ones; 0.0 with no object.
    """
    c = np.asarray(confidences, np.float64)[1:]
    if c.size == 0:
        return 0.0
    return float(1.0 - np.sort(c)[:max(1, int(k))].mean())


def objects_from_prediction(pred, background: int | None = 0) -> np.ndarray:
    """Instance map of a semantic prediction: connected pieces of each non-background class.

    What the ranking falls back to when no instance head output is at hand."""
    p = np.asarray(pred)
    if p.ndim != 2:
        raise InputError(f"prediction must be (H, W), got shape {p.shape}")
    out = np.zeros(p.shape, np.uint32)
    nxt = 0
    for c in np.unique(p):
        if background is not None and c == background:
            continue
        lab, n = ndimage.label(p == c)
        out[lab > 0] = lab[lab > 0] + nxt
        nxt += n
    return out


def pseudo_instances(instances, obj_conf, delta: float, classes=None, labels=None, provenance=None,
                     instance_labels=None, bg_conf=None, margin: int = 2
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge confident predicted objects, whole, into the labels; never touch answered pixels.

    ``instances``: predicted (H, W) instance map; ``obj_conf``: per-id confidences
    (:func:`object_confidence`); an object whose confidence exceeds ``delta`` and that does not
    overlap answered pixels becomes PSEUDO on all its pixels, with its class (``classes`` dict
    or array, default 1) and a fresh id. Background pixels become PSEUDO background where
    ``bg_conf`` (H, W, the background class confidence) exceeds ``delta`` and they are more
    than ``margin`` pixels from every unsure object. Returns new ``(labels uint16, provenance
    uint8, instance_labels uint32)``; old pseudo-labels are replaced.
    """
    from napari_hitl.model.instances import class_lookup

    inst = check_instances(instances)
    shape = inst.shape
    labels = np.zeros(shape, np.uint16) if labels is None else np.asarray(labels)
    provenance = np.zeros(shape, np.uint8) if provenance is None else np.asarray(provenance)
    instance_labels = np.zeros(shape, np.uint32) if instance_labels is None else check_instances(instance_labels, shape)
    if labels.shape != shape or provenance.shape != shape:
        raise InputError(f"labels {labels.shape} and provenance {provenance.shape} must match the instance map {shape}")
    oc = np.asarray(obj_conf, np.float32)
    n = int(inst.max(initial=0))
    if oc.ndim != 1 or len(oc) < n + 1:
        raise InputError(f"obj_conf must hold one confidence per id 0..{n}, got shape {oc.shape}")
    keep = np.isin(provenance, ANSWERED)
    touched = np.zeros(n + 1, bool)
    touched[np.unique(inst[keep])] = True
    sure_ids = (oc[:n + 1] > delta) & ~touched
    sure_ids[0] = False
    sure_obj = sure_ids[inst]
    unsure = (inst > 0) & ~sure_obj
    if margin > 0 and unsure.any():
        unsure = ndimage.binary_dilation(unsure, iterations=int(margin))
    sure_bg = np.zeros(shape, bool)
    if bg_conf is not None:
        sure_bg = (_check_map(bg_conf, shape, "background confidence") > delta) & (inst == 0) & ~unsure
    sure_bg &= ~keep
    lut = class_lookup(classes, n)
    new_labels = np.where(keep, labels, 0).astype(labels.dtype)
    new_labels[sure_obj] = lut[inst[sure_obj]]
    new_prov = np.where(keep, provenance, UNLABELLED).astype(np.uint8)
    new_prov[sure_obj | sure_bg] = PSEUDO
    new_inst = np.where(keep, instance_labels, 0).astype(np.uint32)
    offset = int(new_inst.max(initial=0))
    ids = np.zeros(n + 1, np.uint32)
    ids[np.flatnonzero(sure_ids)] = np.arange(1, int(sure_ids.sum()) + 1, dtype=np.uint32) + offset
    new_inst[sure_obj] = ids[inst[sure_obj]]
    return new_labels, new_prov, new_inst
