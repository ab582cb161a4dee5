"""Prompts: validation errors name the bad value; rasterising draws disks, lines and shared negatives."""

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.prompts import Click, ExtremePoints, RegionPrompts, Scribble, rasterize


def test_click_outside_image_raises():
    r = RegionPrompts(1, clicks=[Click(5, 120)])
    with pytest.raises(InputError, match="outside the 50x100 image"):
        r.validate((50, 100))


def test_empty_scribble_raises():
    with pytest.raises(InputError, match="empty scribble"):
        Scribble(np.zeros((0, 2)))


def test_extreme_points_not_extreme_raise():
    # left and right swapped
    ex = ExtremePoints([[20, 80], [20, 10], [5, 40], [45, 40]])
    with pytest.raises(InputError, match="not extreme"):
        RegionPrompts(1, extreme=ex).validate((50, 100))
    with pytest.raises(InputError, match=r"shape \(4, 2\)"):
        ExtremePoints(np.zeros((3, 2)))


def test_region_without_positive_prompt_and_bad_label_raise():
    with pytest.raises(InputError, match="no positive prompt"):
        RegionPrompts(1, clicks=[Click(3, 3, positive=False)]).validate((10, 10))
    with pytest.raises(InputError, match="label"):
        RegionPrompts(0, clicks=[Click(3, 3)]).validate((10, 10))


def test_extreme_box_and_bbox():
    ex = ExtremePoints([[20, 10], [25, 80], [5, 40], [45, 42]])
    assert ex.box == (5, 10, 45, 80)
    r = RegionPrompts(2, extreme=ex)
    r.validate((50, 100))
    y0, x0, y1, x1 = r.bbox((50, 100), margin=0.0, min_size=1)
    assert (y0, x0, y1, x1) == (5, 10, 46, 81)
    assert r.bbox((50, 100), margin=1.0) == (0, 0, 50, 100)


def test_rasterize_disks_lines_and_others_as_negatives():
    a = RegionPrompts(1, clicks=[Click(10, 10), Click(30, 30, positive=False)])
    b = RegionPrompts(2, scribbles=[Scribble([[40, 5], [40, 45]])])
    pos, neg = rasterize(a, (50, 50), others=[a, b], click_radius=3, scribble_width=3)
    assert pos.dtype == np.float32 and pos.shape == (50, 50)
    assert pos[10, 10] == 1 and pos[10, 13] == 1 and pos[10, 14] == 0 and pos[30, 30] == 0
    assert neg[30, 30] == 1 and neg[40, 25] == 1 and neg[39, 25] == 1 and neg[37, 25] == 0
    assert neg[10, 10] == 0
    pos_b, neg_b = rasterize(b, (50, 50), others=[a])
    assert pos_b[40, 25] == 1 and neg_b[10, 10] == 1
    assert neg_b[30, 30] == 0  # a's negative click says nothing about b
