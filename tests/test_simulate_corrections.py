"""The simulated annotator corrects a two-class prediction object by object with the click robot."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.evaluate.metrics import iou
from napari_hitl.interactive.engine import get_engine
from napari_hitl.simulate.annotator import SimulatedAnnotator
from napari_hitl.simulate.corrections import correct_objects
from napari_hitl.simulate.cost import image_clicks

CENTRES = [(30, 30), (30, 90), (90, 40), (95, 100), (60, 140)]


def _nuclei():
    """Bright disks on a dark noisy background; the prediction is right on three of them, misses one,
    covers half of another, and has one blob where there is nothing."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :170]
    truth = np.zeros((128, 170), bool)
    for cy, cx in CENTRES:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 14 ** 2
    img = np.where(truth, 200, 40) + rng.normal(0, 8, truth.shape)
    img = np.clip(np.stack([img] * 3, -1), 0, 255).astype(np.uint8)
    pred = truth.copy()
    pred[(yy - 90) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = False       # a missed nucleus
    pred[(yy - 95) ** 2 + (xx - 100) ** 2 <= 15 ** 2] &= xx[(yy - 95) ** 2 + (xx - 100) ** 2 <= 15 ** 2] < 100  # half
    pred[5:15, 150:165] = True                                       # a false alarm
    return img, pred, truth


def test_each_object_reaches_the_target_for_fewer_clicks_than_polygons():
    img, pred, truth = _nuclei()
    fix = correct_objects(img, pred, truth, get_engine("graph"), target=0.9)
    assert fix.erased == 1 and fix.cut == 0 and not fix.mask[5:15, 150:165].any()
    assert fix.kept == 3 and fix.clicked + fix.drawn == 2
    yy, xx = np.mgrid[:128, :170]
    for cy, cx in CENTRES:
        near = (yy - cy) ** 2 + (xx - cx) ** 2 <= 20 ** 2
        assert iou(fix.mask & near, truth & near) >= 0.9, (cy, cx)
    assert fix.clicks < image_clicks(truth.astype(np.uint8))
    # accept + erase + at least one click per object that needed work
    assert fix.clicks >= 1 + 1 + 2


def test_annotator_corrects_when_cheaper_and_draws_otherwise():
    img, pred, truth = _nuclei()
    t = truth.astype(np.uint8)
    ann = SimulatedAnnotator([t], engine=get_engine("graph"))
    good = ann.label_image(0, img, pred.astype(np.uint8))
    assert good.clicks < image_clicks(t) and ann.corrections[-1]["used"]
    assert iou(good.labels == 1, truth) > 0.9
    # the inverse mask is one fill click to erase and one click per nucleus
    inverse = ann.label_image(0, img, (~truth).astype(np.uint8))
    assert inverse.clicks == 1 + 1 + len(CENTRES) and iou(inverse.labels == 1, truth) > 0.9
    # speckle costs a click per speck, more than drawing: the answer is the polygons
    speckle = np.random.default_rng(1).random(truth.shape) < 0.3
    bad = ann.label_image(0, img, speckle.astype(np.uint8))
    assert not ann.corrections[-1]["used"] and ann.corrections[-1]["clicks"] > image_clicks(t)
    assert bad.clicks == image_clicks(t) and np.array_equal(bad.labels, t)
    # no prediction (or no engine): polygons
    assert SimulatedAnnotator([t]).label_image(0, img, pred.astype(np.uint8)).clicks == image_clicks(t)
    assert ann.label_image(0, img, None).clicks == image_clicks(t)


def test_shapes_must_agree():
    img, pred, truth = _nuclei()
    with pytest.raises(InputError, match="one height and width"):
        correct_objects(img, pred[:-1], truth, get_engine("graph"))


def test_parts_away_from_objects_are_cut_as_polygons():
    img, _, truth = _nuclei()
    pred = truth.copy()
    pred[28:33, 30:169] = True  # a long arm from the first nucleus across the image
    fix = correct_objects(img, pred, truth, get_engine("graph"), margin=4)
    assert fix.cut >= 1 and fix.erased == 0
    assert iou(fix.mask, truth) > 0.9
