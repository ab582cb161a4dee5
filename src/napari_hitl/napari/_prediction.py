"""The model's prediction of the shown image as layers of its own, as ilastik shows it.

After a training round (and whenever the shown image is predicted) the dock puts the
model's classes in a ``<image> prediction`` labels layer under the person's labels, and its
uncertainty (1 - margin between the two likeliest classes) in a hidden ``<image> uncertainty``
image layer. napari's own eye toggle and opacity slider show, hide and blend them; they
are views only: nothing in them is saved, the person's labels layer stays the one to edit.
The two layers are made once and then reused from image to image (emptied and hidden while
the shown image has no prediction, with the person's eye toggles kept), and they are made with
the first image's own layers (:meth:`PredictionLayers.prepare`): napari spends about 240 ms of the
UI thread making them, a stall a person would feel at every image change, or when a training
round ends.
Kept layers have the shown image's dimensions (3-D for a time-lapse, else 2-D): napari cannot
change a layer's dimensions in place (the viewer keeps the old ones, so a frame slider stays, or
slicing fails), so on a move between a time-lapse and a plain image the pair goes with the
image's own layers (:meth:`PredictionLayers.drop_other_ndim`) and is made again.
"""

from __future__ import annotations

import numpy as np

from napari_hitl.napari._layers import empty_hidden

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

    def prepare(self, name: str, colormap, below=None, ndim: int = 2) -> None:
        """Have the two layers ready for ``name`` (of ``ndim`` dimensions), empty and hidden, under
        ``below``: made here, with the image's own layers, when they are missing (or of other
        dimensions), so that the first prediction of the session only sets their data (see the
        module's docstring)."""
        if not self._present(ndim):
            self._make(name, np.zeros((1,) * ndim, np.uint8), np.zeros((1,) * ndim, np.float32), colormap,
                       {PREDICTION: False, UNCERTAINTY: False})
        else:
            for kind, layer in self.layers.items():
                layer.name = f"{name} {kind}"
        self._place(below)

    def show(self, name: str, preds, colormap, below=None) -> None:
        """Show ``preds`` (the image's list of predictions) as ``<name> prediction`` (visible,
        under ``below``) and ``<name> uncertainty`` (hidden until the person turns it on)."""
        classes, unsure = prediction_arrays(preds)
        if not self._present(classes.ndim):
            self._make(name, classes, unsure, colormap, self.visible)
        else:
            pred, unc = self.layers[PREDICTION], self.layers[UNCERTAINTY]
            if self.holding:  # a new prediction of the shown image: the person's eye toggles stay
                self.visible = {kind: bool(layer.visible) for kind, layer in self.layers.items()}
            pred.data, unc.data = classes, unsure
            pred.colormap, unc.contrast_limits = colormap, (0.0, 1.0)
            for kind, layer in self.layers.items():
                layer.name = f"{name} {kind}"
                layer.visible = self.visible[kind]
        self.holding = True
        self._place(below)

    def _make(self, name: str, classes, unsure, colormap, visible: dict) -> None:
        """Make the two layers anew (any left of the old pair goes), showing ``classes`` and ``unsure``."""
        self.clear()
        self.layers = {
            PREDICTION: self.viewer.add_labels(classes, name=f"{name} {PREDICTION}", colormap=colormap,
                                               opacity=0.35, visible=visible[PREDICTION]),
            UNCERTAINTY: self.viewer.add_image(unsure, name=f"{name} {UNCERTAINTY}", colormap="magma", opacity=0.5,
                                               contrast_limits=(0.0, 1.0), blending="additive",
                                               visible=visible[UNCERTAINTY])}

    def _present(self, ndim: int | None = None) -> bool:
        """Whether both layers are in the viewer (and of ``ndim`` dimensions, when given)."""
        return all(self.layers.get(kind) in self.viewer.layers and ndim in (None, self.layers[kind].ndim)
                   for kind in (PREDICTION, UNCERTAINTY))

    def other_ndim(self, ndim: int) -> list:
        """The kept layers that an image of ``ndim`` dimensions cannot reuse."""
        return [layer for layer in self.layers.values() if layer in self.viewer.layers and layer.ndim != ndim]

    def drop_other_ndim(self, ndim: int) -> None:
        """Remove the layers of other dimensions than the next image's ``ndim`` (a time-lapse after a
        plain image, or the reverse; see the module's docstring): the dock calls this in the batch
        that removes the last image's layers. :meth:`prepare` makes them again."""
        if self.other_ndim(ndim):
            if self.holding:  # the person's eye toggles stay for the layers made again
                self.visible.update({kind: bool(layer.visible) for kind, layer in self.layers.items()
                                     if layer in self.viewer.layers})
            self.clear()

    def _place(self, below) -> None:
        """The layers just under ``below`` (the person's labels stay on top, and active)."""
        if below is None or below not in self.viewer.layers:
            return
        layers, pred, unc = self.viewer.layers, self.layers[PREDICTION], self.layers[UNCERTAINTY]
        at = layers.index(below)
        if at < 2 or layers[at - 1].name != pred.name or layers[at - 2].name != unc.name:  # (proxies: names)
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
            empty_hidden(layer, np.zeros((1,) * np.ndim(layer.data), layer.data.dtype))
            layer.name = f"{name} {kind}"
        self.holding = False

    def clear(self) -> None:
        """Remove the layers (the project closed, or one of them was deleted)."""
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}
        self.holding = False
