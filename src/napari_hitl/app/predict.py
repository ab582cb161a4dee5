"""Predictions of the project's images with its model, and superpixel suggestions from them.

Prediction is a generator job (see :mod:`napari_hitl.app.jobs`).
"""

from __future__ import annotations

from typing import Generator

import numpy as np

from napari_hitl.active.uncertainty import Prediction
from napari_hitl.app.model_host import ModelHost


def predict_images(host: ModelHost, names: list[str], done: dict
                   ) -> Generator[tuple[int, int], None, dict[str, list[Prediction]]]:
    """Predict ``names`` (every frame of a time-lapse) into ``done``, skipping those already
    there: yields ``(i, n)`` after each image and returns ``done`` (closed early, ``done`` holds
    what is finished: call again to go on)."""
    from napari_hitl.model.segnet import predict_with_features

    model = host.get().model
    project = host.project
    for i, name in enumerate(names):
        if name in done:
            continue
        image = project.read_image(name)
        planes = list(image) if project.record(name).is_stack else [image]
        preds = []
        for plane in planes:
            p, f = predict_with_features(model, plane)
            preds.append(Prediction.from_probs(p, f.mean(axis=(1, 2)).astype(np.float32)))
        done[name] = preds
        yield i + 1, len(names)
    return done


def superpixel_suggestions(image: np.ndarray, pred: Prediction, num_classes: int, k: int = 8,
                           n_segments: int = 150, exclude=()):
    """``(segments, suggestions)``: SLIC superpixels of one plane and the ``k`` most uncertain
    (margin, edge-weighted, class-balanced) as :class:`~napari_hitl.active.superpixels.Suggestion`."""
    from napari_hitl.active.superpixels import edge_strength, image_suggestions, slic_superpixels, suggest_superpixels

    seg = slic_superpixels(image, n_segments=n_segments)
    cands = image_suggestions(0, seg, 1.0 - pred.margin, pred.pred, num_classes, edge_strength(image), 1.0,
                              exclude=exclude)
    return seg, suggest_superpixels(cands, k, class_balanced=True)
