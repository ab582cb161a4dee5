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


def test_layers_of_other_dimensions_are_made_again_for_the_next_image_with_the_eye_toggles():
    """napari cannot change a layer's dimensions in place: a time-lapse's 3-D pair goes before a
    plain image (and the reverse), and is made again with the image's dimensions, hidden and
    empty until its prediction comes, which shows with the person's eye toggles."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layers = PredictionLayers(viewer)
    layers.prepare("a", _cmap(), ndim=2)
    assert [lay.ndim for lay in layers.layers.values()] == [2, 2] and not layers.other_ndim(2)
    video = _preds(3) * 4  # four frames
    layers.drop_other_ndim(3)  # a time-lapse next: the 2-D pair goes ...
    assert layers.layers == {} and len(viewer.layers) == 0
    layers.prepare("v", _cmap(), ndim=3)  # ... and comes back 3-D with the time-lapse's own layers
    layers.show("v", video, _cmap())
    pred, unc = layers.layers[PREDICTION], layers.layers[UNCERTAINTY]
    assert pred.ndim == unc.ndim == 3 and pred.data.shape == (4, 16, 16)
    pred.visible, unc.visible = False, True  # the person's eye toggles
    assert layers.other_ndim(2) == [pred, unc] and not layers.other_ndim(3)
    layers.drop_other_ndim(2)
    layers.empty("b")
    layers.prepare("b", _cmap(), ndim=2)
    assert [lay.ndim for lay in layers.layers.values()] == [2, 2] and viewer.dims.ndim == 2
    assert not any(lay.visible for lay in layers.layers.values())
    layers.show("b", _preds(4), _cmap())
    assert not layers.layers[PREDICTION].visible and layers.layers[UNCERTAINTY].visible
