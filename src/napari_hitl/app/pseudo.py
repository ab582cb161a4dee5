"""Pseudo-labels written to the project: this round's replace last round's (humans always win).

With the model's objects at hand (the instance head), pseudo-labels go object by object: a
confident object is saved whole, an unsure one not at all (nor the background ring around it),
so the model never learns half an object; otherwise confident pixels are saved one by one.
"""

from __future__ import annotations

import threading

import numpy as np

from napari_hitl.active.pseudo import PseudoSettings, machine_labelled_images, pseudo_labels
from napari_hitl.active.uncertainty import Prediction
from napari_hitl.app.rank import image_score
from napari_hitl.project import PSEUDO


def update_pseudo_labels(project, predictions: dict[str, list[Prediction]], settings: PseudoSettings, t: int,
                         lock: threading.RLock) -> int:
    """Replace last round's pseudo-labels by this round's: the gamma_t most consistent images
    (without any human label) keep their confident pixels (confidence > delta). Returns pixels."""
    with lock:
        return _update_pseudo(project, predictions, settings, t)


def _update_pseudo(project, predictions, settings: PseudoSettings, t: int) -> int:
    beta = settings.beta(t)
    names = [r.name for r in project.images]
    cons, human = {}, set()
    for i, name in enumerate(names):
        c = project.counts(name)
        if c.human or c.simulated:
            human.add(i)
        if name in predictions:
            cons[i] = image_score(i, name, predictions[name], beta).consistency
    chosen = set(machine_labelled_images(cons, settings.gamma(t), exclude=human)) if settings.enabled else set()
    total = 0
    for i, name in enumerate(names):
        if i not in chosen and not project.counts(name).pseudo:
            continue
        labels, prov = project.read_labels(name)
        stack = labels.ndim == 3
        for t_ in range(labels.shape[0]) if stack else [None]:
            lab = labels[t_] if stack else labels
            pv = prov[t_] if stack else prov
            old = pv == PSEUDO
            if old.any():
                project.clear_labels(name, where=old, frame=t_)
                lab, pv = np.where(old, 0, lab), np.where(old, 0, pv)
            if i not in chosen:
                continue
            pred = predictions[name][t_ if stack else 0]
            commit = commit_pseudo_objects if pred.instances is not None else commit_pseudo_labels
            where, _ = commit(project, name, pred, settings.delta, frame=t_, labels=lab, provenance=pv)
            total += int(where.sum())
    return total


def commit_pseudo_objects(project, name: str, pred: Prediction, delta: float, frame: int | None = None,
                          labels=None, provenance=None) -> tuple[np.ndarray, np.ndarray]:
    """Save the confident objects of ``pred`` whole (object confidence > ``delta``) and the
    confident background away from unsure objects as pseudo labels of one plane of ``name``,
    never over a person's or accepted labels. Returns ``(where, labels)`` like
    :func:`commit_pseudo_labels`."""
    from napari_hitl.active.objects import pseudo_instances

    if labels is None or provenance is None:
        labels, provenance = project.read_labels(name, frame=frame)
    bg_conf = np.where(pred.pred == 0, pred.conf, 0.0).astype(np.float32)
    new_lab, new_prov, new_inst = pseudo_instances(pred.instances, pred.object_conf, delta, pred.classes, labels,
                                                   provenance, bg_conf=bg_conf)
    where = new_prov == PSEUDO
    if where.any():
        ids = np.where(where, new_inst, 0).astype(np.uint32)
        sel = ids > 0
        classes = {int(k): int(c) for k, c in zip(*np.unique(np.stack([ids[sel], new_lab[sel]]), axis=1))}
        project.commit_instances(name, ids, classes, source="pseudo", where=where, frame=frame)
    return where, new_lab


def commit_pseudo_labels(project, name: str, pred: Prediction, delta: float, frame: int | None = None,
                         labels=None, provenance=None) -> tuple[np.ndarray, np.ndarray]:
    """Save the confident pixels (> ``delta``) of ``pred`` as pseudo labels of one plane of ``name``,
    never over human or accepted labels (``labels``/``provenance``: the plane's, read when not
    given). Returns ``(where, labels)``: the pixels written and the plane's new labels."""
    if labels is None or provenance is None:
        labels, provenance = project.read_labels(name, frame=frame)
    new_lab, new_prov = pseudo_labels(pred.conf, pred.pred, delta, labels, provenance)
    where = new_prov == PSEUDO
    if where.any():
        project.commit_labels(name, new_lab, source="pseudo", where=where, frame=frame)
    return where, new_lab
