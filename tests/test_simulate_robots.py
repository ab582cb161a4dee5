"""Scribble robot and extreme points from hand-made masks."""

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.prompts import line_map
from napari_hitl.simulate.extreme import extreme_points
from napari_hitl.simulate.scribbles import best_error_region, next_scribble


def _blob(shape=(80, 100)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - 40) / 30.0) ** 2 + ((xx - 50) / 40.0) ** 2 <= 1.0


def test_scribble_stays_inside_true_region_and_extends_from_correct_part():
    truth = _blob()
    pred = truth.copy()
    pred[:, 50:] = False                    # right half missed
    for seed in range(5):
        s = next_scribble(pred, truth, seed=seed)
        assert s.positive
        drawn = line_map(s.points, truth.shape, 3) > 0
        assert drawn.any() and not (drawn & ~truth).any()
        assert len(s.points) >= 2
        y, x = s.points[0]
        assert 47 <= x <= 52                  # starts where the miss touches the correct part


def test_negative_scribble_on_false_alarm_avoids_ignore():
    truth = _blob()
    pred = truth.copy()
    pred[0:20, 0:100] = True                  # false alarm along the top
    ignore = np.zeros_like(truth)
    ignore[0:20, 0:30] = True
    s = next_scribble(pred, truth, ignore, seed=1)
    assert not s.positive
    drawn = line_map(s.points, truth.shape, 3) > 0
    assert not (drawn & truth).any() and not (drawn & ignore).any()


def test_scribble_picks_largest_iou_gain_and_none_without_error():
    truth = np.zeros((50, 50), bool)
    truth[5:45, 5:45] = True
    pred = truth.copy()
    pred[5:10, 5:25] = False      # miss of 100 px
    pred[46:50, 0:50] = True      # false alarm of 200 px
    # I = 1500, U = 1800: fixing the miss gives 1600/1800, removing the false alarm 1500/1600
    comp, positive = best_error_region(pred, truth)
    assert not positive and comp[48, 25]
    pred[46:50, 0:50] = False
    pred[46:48, 0:50] = True      # now the false alarm is 100 px: I/(U-a) = 1500/1700 < 1600/1700
    comp, positive = best_error_region(pred, truth)
    assert positive and comp[7, 10]
    assert next_scribble(truth, truth) is None


def test_extreme_points_are_extreme_and_on_the_mask():
    m = _blob()
    ex = extreme_points(m, jitter=0)
    (ly, lx), (ry, rx), (ty, tx), (by, bx) = ex.points
    assert lx == 10 and rx == 90 and ty == 10 and by == 70
    for seed in range(10):
        ex = extreme_points(m, jitter=3, seed=seed)
        ex.validate(m.shape)
        for y, x in ex.points:
            assert m[int(y), int(x)]
        assert ex.points[0, 1] <= 13 and ex.points[1, 1] >= 87
    assert np.array_equal(extreme_points(m, 3, seed=4).points, extreme_points(m, 3, seed=4).points)
    with pytest.raises(InputError, match="empty mask"):
        extreme_points(np.zeros((5, 5), bool))
