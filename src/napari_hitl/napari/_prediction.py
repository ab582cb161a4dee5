"""The model's prediction of the shown image as layers of its own, as ilastik shows it.

After a training round (and whenever the shown image is predicted) the dock puts the
model's classes in a ``<image> prediction`` labels layer under the person's labels, and its
uncertainty (1 - margin between the two likeliest classes) in a hidden ``<image> uncertainty``
image layer. napari's own eye toggle and opacity slider show, hide and blend them; they
are views only: nothing in them is saved, the person's labels layer stays the one to edit.
"""

from __future__ import annotations

import numpy as np

PREDICTION, UNCERTAINTY = "prediction", "uncertainty"


def prediction_arrays(preds) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, uncertainty)`` of an image's predictions (one per frame; a stack for a time-lapse)."""
    classes = [p.pred for p in preds]
    unsure = [1.0 - p.margin for p in preds]
    if len(preds) == 1:
        return classes[0], unsure[0].astype(np.float32)
    return np.stack(classes), np.stack(unsure).astype(np.float32)


class PredictionLayers:
    """Keeps the two prediction layers of the shown image in ``viewer`` up to date."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict[str, object] = {}

    def show(self, name: str, preds, colormap, below=None) -> None:
        """Show ``preds`` (the image's list of predictions) as ``<name> prediction`` (visible,
        under ``below``) and ``<name> uncertainty`` (hidden until the person turns it on)."""
        classes, unsure = prediction_arrays(preds)
        current = self.layers.get(PREDICTION)
        if current is not None and current in self.viewer.layers and current.name == f"{name} {PREDICTION}":
            current.data = classes
            self.layers[UNCERTAINTY].data = unsure
            return
        self.clear()
        pred = self.viewer.add_labels(classes, name=f"{name} {PREDICTION}", colormap=colormap, opacity=0.35)
        unc = self.viewer.add_image(unsure, name=f"{name} {UNCERTAINTY}", colormap="magma", opacity=0.5,
                                    contrast_limits=(0.0, 1.0), blending="additive", visible=False)
        self.layers = {PREDICTION: pred, UNCERTAINTY: unc}
        if below is not None and below in self.viewer.layers:  # the person's labels stay on top
            for layer in (unc, pred):
                self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(below))
            self.viewer.layers.selection.active = below

    def clear(self) -> None:
        """Remove the layers (another image is shown, or the project closed)."""
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
