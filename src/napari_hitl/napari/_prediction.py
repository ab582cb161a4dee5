"""The model's prediction of the shown image as layers of its own, as ilastik shows it.

After a training round (and whenever the shown image is predicted) the dock puts the
model's classes in a ``<image> prediction`` labels layer under the person's labels, and its
uncertainty (1 - margin between the two likeliest classes) in a hidden ``<image> uncertainty``
image layer. napari's own eye toggle and opacity slider show, hide and blend them; they
are views only: nothing in them is saved, the person's labels layer stays the one to edit.
The two layers are made once and then reused from image to image (emptied and hidden while
the shown image has no prediction, with the person's eye toggles kept): napari spends about
240 ms of the UI thread making them, a stall a person feels at every image change.
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

    #: a layer's visibility when first made: the classes shown, the uncertainty on request
    DEFAULT_VISIBLE = {PREDICTION: True, UNCERTAINTY: False}

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict[str, object] = {}
        self.visible = dict(self.DEFAULT_VISIBLE)  # the person's eye toggles, kept across images
        self.holding = False  # whether the layers hold a prediction (else empty and hidden)

    def show(self, name: str, preds, colormap, below=None) -> None:
        """Show ``preds`` (the image's list of predictions) as ``<name> prediction`` (visible,
        under ``below``) and ``<name> uncertainty`` (hidden until the person turns it on)."""
        classes, unsure = prediction_arrays(preds)
        pred, unc = self.layers.get(PREDICTION), self.layers.get(UNCERTAINTY)
        if pred is None or unc is None or pred not in self.viewer.layers or unc not in self.viewer.layers:
            self.clear()
            pred = self.viewer.add_labels(classes, name=f"{name} {PREDICTION}", colormap=colormap, opacity=0.35,
                                          visible=self.visible[PREDICTION])
            unc = self.viewer.add_image(unsure, name=f"{name} {UNCERTAINTY}", colormap="magma", opacity=0.5,
                                        contrast_limits=(0.0, 1.0), blending="additive",
                                        visible=self.visible[UNCERTAINTY])
            self.layers = {PREDICTION: pred, UNCERTAINTY: unc}
        else:
            if self.holding:  # a new prediction of the shown image: the person's eye toggles stay
                self.visible = {kind: bool(layer.visible) for kind, layer in self.layers.items()}
            pred.data, unc.data = classes, unsure
            pred.colormap, unc.contrast_limits = colormap, (0.0, 1.0)
            for kind, layer in self.layers.items():
                layer.name = f"{name} {kind}"
                layer.visible = self.visible[kind]
        self.holding = True
        if below is not None and below in self.viewer.layers:  # the person's labels stay on top
            layers = self.viewer.layers
            at = layers.index(below)
            if at < 2 or layers[at - 1] is not pred or layers[at - 2] is not unc:
                for layer in (unc, pred):
                    layers.move(layers.index(layer), layers.index(below))
            layers.selection.active = below

    def empty(self, name: str) -> None:
        """Another image, ``name``, is shown: the layers stay (see the module's docstring), named
        for it, emptied and hidden until its prediction comes; the person's eye toggles are kept."""
        for kind, layer in list(self.layers.items()):
            if layer not in self.viewer.layers:  # the person deleted it: made again when needed
                del self.layers[kind]
                continue
            if self.holding:
                self.visible[kind] = bool(layer.visible)
            layer.visible = False
            layer.data = np.zeros((1,) * np.ndim(layer.data), layer.data.dtype)
            layer.name = f"{name} {kind}"
        self.holding = False

    def clear(self) -> None:
        """Remove the layers (the project closed, or one of them was deleted)."""
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
        self.holding = False
