"""Graph engine on synthetic images: clicks, extreme points, regions competing, bad prompts."""

import numpy as np
import pytest

from napari_hitl.errors import HitlError, InputError
from napari_hitl.evaluate.metrics import iou
from napari_hitl.interactive.engine import get_engine
from napari_hitl.prompts import Click, RegionPrompts
from napari_hitl.simulate.extreme import extreme_points


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:120, :160]
    disk = (yy - 60) ** 2 + (xx - 50) ** 2 <= 30 ** 2
    square = (yy >= 30) & (yy < 90) & (xx >= 100) & (xx < 145)
    img = np.zeros((120, 160, 3), np.float32) + [0.2, 0.3, 0.8]
    img[disk] = [0.9, 0.2, 0.1]
    img[square] = [0.2, 0.8, 0.2]
    img += rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), disk, square


@pytest.mark.parametrize("method", ["grabcut", "walker"])
def test_click_and_extreme_points_find_the_object(method):
    img, disk, _ = _scene()
    eng = get_engine("graph", method=method)
    eng.prepare(img)
    logits = eng.predict(RegionPrompts(1, clicks=[Click(60, 50)]))
    assert logits.shape == disk.shape and logits.dtype == np.float32
    assert iou(logits > 0, disk) > 0.9
    m = eng.predict_mask(RegionPrompts(1, extreme=extreme_points(disk, jitter=2, seed=0)))
    assert iou(m, disk) > 0.9


def test_regions_compete_jointly():
    img, disk, square = _scene(1)
    eng = get_engine("graph", joint=True)
    eng.prepare(img)
    regions = [RegionPrompts(1, extreme=extreme_points(disk, 2, seed=1)),
               RegionPrompts(2, extreme=extreme_points(square, 2, seed=2))]
    a, b = eng.predict_all(regions)
    assert iou(a > 0, disk) > 0.85 and iou(b > 0, square) > 0.85


def test_errors():
    eng = get_engine("graph")
    with pytest.raises(HitlError, match="prepare"):
        eng.predict(RegionPrompts(1, clicks=[Click(1, 1)]))
    eng.prepare(np.zeros((20, 30), np.uint8))
    with pytest.raises(InputError, match="outside the 20x30 image"):
        eng.predict(RegionPrompts(1, clicks=[Click(25, 1)]))
    with pytest.raises(InputError, match="previous mask has shape"):
        eng.predict(RegionPrompts(1, clicks=[Click(5, 5)]), prev_mask=np.ones((5, 5), bool))
    with pytest.raises(InputError, match="method"):
        get_engine("graph", method="magic")


def test_learned_priors_decide_where_colour_cannot():
    """Two regions of one colour meeting without an edge: the colour walk cannot place the border,
    the learned logits can; weight 0 is the plain joint walk; bad priors are refused."""
    rng = np.random.default_rng(3)
    img = np.clip(0.5 + rng.normal(0, 0.02, (80, 120, 3)), 0, 1).astype(np.float32)
    left = np.zeros((80, 120), bool)
    left[:, :60] = True
    regions = [RegionPrompts(1, extreme=extreme_points(left | (np.arange(120) < 80)[None, :], 0, seed=0)),
               RegionPrompts(2, extreme=extreme_points(~left | (np.arange(120) >= 40)[None, :], 0, seed=0))]
    eng = get_engine("graph")
    eng.prepare(img)
    logits = [np.where(left, 4.0, -4.0).astype(np.float32), np.where(left, -4.0, 4.0).astype(np.float32)]
    a, b = eng.solve_with_priors(regions, None, logits, weight=2.0)
    assert a.shape == left.shape and a.dtype == np.float32
    won = a > b
    assert (won == left).mean() > 0.97, (won == left).mean()
    plain = eng.predict_all(regions)
    zero = eng.solve_with_priors(regions, None, logits, weight=0.0)
    np.testing.assert_allclose(zero[0], plain[0], atol=1e-5)
    assert ((plain[0] > plain[1]) == left).mean() < (won == left).mean()
    with pytest.raises(InputError, match="logit map has shape"):
        eng.solve_with_priors(regions, None, [np.zeros((5, 5), np.float32)] * 2)
    with pytest.raises(InputError, match="2 regions, 2 previous masks and 1 logit"):
        eng.solve_with_priors(regions, None, logits[:1])
    with pytest.raises(InputError, match="weight"):
        eng.solve_with_priors(regions, None, logits, weight=-1.0)
