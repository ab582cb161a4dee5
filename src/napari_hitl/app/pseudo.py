"""Pseudo-labels written to the project: this round's replace last round's (humans always win)."""

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
            where, _ = commit_pseudo_labels(project, name, predictions[name][t_ if stack else 0], settings.delta,
                                            frame=t_, labels=lab, provenance=pv)
            total += int(where.sum())
    return total


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
