"""Full-image canvas: every covered pixel gets exactly one region, none is left unassigned."""

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.interactive.canvas import compose, coverage, segment_full_image
from napari_hitl.interactive.engine import get_engine
from napari_hitl.prompts import Click, ExtremePoints, RegionPrompts
from napari_hitl.simulate.extreme import extreme_points


def test_compose_no_overlap_no_hole_in_covered_area():
    rng = np.random.default_rng(0)
    shape = (40, 50)
    logits = [rng.normal(-1, 2, shape).astype(np.float32) for _ in range(3)]   # many all-negative pixels
    covered = np.zeros(shape, bool)
    covered[5:35, 5:45] = True
    out = compose(logits, [3, 7, 9], covered)
    assert set(np.unique(out[covered])) <= {3, 7, 9}                       # no hole inside
    stack = np.stack(logits)
    assert np.array_equal(out[covered], np.array([3, 7, 9])[stack.argmax(0)][covered])  # argmax winner
    outside = ~covered
    claimed = stack.max(0) > 0
    assert (out[outside & ~claimed] == 0).all() and (out[outside & claimed] > 0).all()


def test_segment_full_image_three_touching_regions():
    rng = np.random.default_rng(1)
    truth = np.zeros((60, 90), np.int32)
    truth[:, :30], truth[:, 30:60], truth[:, 60:] = 1, 2, 3
    colours = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]], float)
    img = np.clip(colours[truth] + rng.normal(0, 10, truth.shape + (3,)), 0, 255).astype(np.uint8)
    regions = [RegionPrompts(k, extreme=extreme_points(truth == k, 2, seed=k)) for k in (1, 2, 3)]
    for opts in ({}, {"joint": True}):
        eng = get_engine("graph", **opts)
        out = segment_full_image(eng, img, regions)
        cov = coverage(regions, truth.shape)
        assert cov.mean() > 0.9 and (out[cov] > 0).all()
        assert (out == truth).mean() > 0.95


def test_duplicate_labels_and_bad_prev_labels_raise():
    eng = get_engine("graph")
    img = np.zeros((20, 20, 3), np.uint8)
    r = [RegionPrompts(1, clicks=[Click(2, 2)]), RegionPrompts(1, clicks=[Click(10, 10)])]
    with pytest.raises(InputError, match="share the label 1"):
        segment_full_image(eng, img, r)
    with pytest.raises(InputError, match="prev_labels has shape"):
        segment_full_image(eng, img, r[:1], prev_labels=np.zeros((3, 3), int))
    with pytest.raises(InputError, match="not extreme"):
        segment_full_image(eng, img, [RegionPrompts(1, extreme=ExtremePoints([[5, 15], [5, 2], [1, 8], [9, 8]]))])
