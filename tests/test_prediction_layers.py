"""PredictionLayers keeps the person's eye toggles (no Qt: a ViewerModel)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_hitl.active.uncertainty import Prediction  # noqa: E402
from napari_hitl.napari._prediction import PREDICTION, UNCERTAINTY, PredictionLayers  # noqa: E402


def _preds(seed: int) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    p = rng.random((2, 16, 16)).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    return [Prediction.from_probs(p)]


def _cmap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1)})


def test_a_new_prediction_of_the_shown_image_keeps_the_eye_toggles():
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layers = PredictionLayers(viewer)
    layers.show("a", _preds(0), _cmap())
    pred, unc = layers.layers[PREDICTION], layers.layers[UNCERTAINTY]
    assert pred.visible and not unc.visible
    pred.visible, unc.visible = False, True  # the person's eye toggles
    layers.show("a", _preds(1), _cmap())  # the image is predicted again (after a training round)
    assert layers.layers[PREDICTION] is pred and layers.layers[UNCERTAINTY] is unc
    assert not pred.visible and unc.visible
    # and they are carried to the next image
    layers.empty("b")
    layers.show("b", _preds(2), _cmap())
    assert not pred.visible and unc.visible
