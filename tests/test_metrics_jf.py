"""The DAVIS region (J) and contour (F) scores on hand-made masks with known values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.evaluate.metrics import boundary_f, boundary_map, j_and_f


def _square(y, x, side=10, shape=(40, 60)):
    m = np.zeros(shape, bool)
    m[y:y + side, x:x + side] = True
    return m


def test_boundary_map_is_the_one_pixel_rim():
    b = boundary_map(_square(5, 5))
    assert b.sum() == 36 and not b[6:14, 6:14].any() and b[5, 5:15].all()


def test_boundary_f_known_values():
    t = _square(5, 5)
    assert boundary_f(t, t) == 1.0
    # a 1-px shift stays within the tolerance (0.008 x diagonal 72 px -> 1 px)
    assert boundary_f(_square(6, 5), t) == 1.0
    # an extra square far away: half the predicted boundary is matched, all the true one is
    extra = t | _square(25, 40)
    assert boundary_f(extra, t) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert boundary_f(_square(25, 40), t) == 0.0
    assert boundary_f(np.zeros_like(t), t) == 0.0
    assert boundary_f(np.zeros_like(t), np.zeros_like(t)) == 1.0
    # a wider tolerance (5 px on this 72 px diagonal) matches a 4-px shift
    assert boundary_f(_square(9, 5), t) < 0.8 and boundary_f(_square(9, 5), t, tolerance=0.07) == 1.0
    with pytest.raises(InputError):
        boundary_f(t, t[:10])


def test_j_and_f_per_frame_means():
    truth = np.stack([_square(5, 5), _square(5, 5), np.zeros((40, 60), bool)]).astype(np.int16)
    pred = np.stack([_square(5, 5), _square(5, 10), np.zeros((40, 60), bool)]).astype(np.int16)
    out = j_and_f(pred, truth)
    # frame 0 exact (1), frame 1 shifted 5 px: 50 / 150, frame 2 both empty (1)
    assert out["J_frames"] == pytest.approx([1.0, 1 / 3, 1.0])
    assert out["J"] == pytest.approx((2 + 1 / 3) / 3)
    assert out["F_frames"][0] == 1.0 and out["F_frames"][2] == 1.0 and 0 < out["F_frames"][1] < 1
    assert out["J&F"] == pytest.approx((out["J"] + out["F"]) / 2)
    # background pooled in would flatter: mIoU-style pixel agreement is far higher than J here
    bad = np.zeros_like(truth)
    assert j_and_f(bad[:2], truth[:2])["J"] == 0.0
    with pytest.raises(InputError):
        j_and_f(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
