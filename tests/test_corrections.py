"""Correcting a mask the model proposed: negative prompts alone are valid once a mask exists."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import get_engine
from napari_hitl.prompts import Click, RegionPrompts


def _scene():
    img = np.full((96, 96, 3), 30, np.uint8)
    img[20:50, 20:50] = (220, 60, 60)   # the object
    img[60:85, 60:85] = (60, 200, 60)   # something the model wrongly took as object
    truth = np.zeros((96, 96), bool)
    truth[20:50, 20:50] = True
    prev = truth.copy()
    prev[60:85, 60:85] = True
    return img, truth, prev


@pytest.mark.parametrize("engine_name, options", [("graph", {}), ("graph", {"method": "walker"}),
                                                   ("clicknet", {})])
def test_negative_click_corrects_a_previous_mask(engine_name, options):
    img, truth, prev = _scene()
    engine = get_engine(engine_name, **options)
    engine.prepare(img)
    region = RegionPrompts(label=1, clicks=[Click(72, 72, positive=False)])
    mask = engine.predict_mask(region, prev_mask=prev)
    assert not mask[70:75, 70:75].any(), "the negative click must act where it was placed"
    assert mask[25:45, 25:45].mean() > 0.9, "the rest of the previous mask stays"
    if engine_name == "graph":  # the colour model removes the whole false part
        assert not mask[62:83, 62:83].any()


def test_negative_only_without_a_mask_is_still_an_error():
    img, _, _ = _scene()
    engine = get_engine("graph")
    engine.prepare(img)
    region = RegionPrompts(label=1, clicks=[Click(72, 72, positive=False)])
    with pytest.raises(InputError, match="no positive prompt"):
        engine.predict(region)
    with pytest.raises(InputError, match="no positive prompt"):
        engine.predict(region, prev_mask=np.zeros((96, 96), bool))


@pytest.mark.parametrize("engine_name", ["graph", "clicknet"])
def test_full_image_mode_works_with_both_engines_on_a_prepared_image(engine_name):
    from napari_hitl.interactive.canvas import segment_full_image
    from napari_hitl.prompts import ExtremePoints

    img, _, _ = _scene()
    engine = get_engine(engine_name)
    engine.prepare(img)
    assert engine.shape == (96, 96)
    regions = [RegionPrompts(1, extreme=ExtremePoints(np.array([[35, 20], [35, 49], [20, 35], [49, 35]], float))),
               RegionPrompts(2, extreme=ExtremePoints(np.array([[72, 60], [72, 84], [60, 72], [84, 72]], float)))]
    labels = segment_full_image(engine, None, regions)  # the canvas size comes from the engine
    assert labels.shape == (96, 96)
    assert (labels[25:45, 25:45] == 1).mean() > 0.8 and (labels[65:80, 65:80] == 2).mean() > 0.8
