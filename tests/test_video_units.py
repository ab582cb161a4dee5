"""Annotation units of a video: frames, grid rectangles, superpixels; masks, lookup, per-unit means."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.video.units import UnitSet, parse_unit


def test_parse_unit():
    assert parse_unit("frame") == ("frame", 0)
    assert parse_unit("rect40") == ("rect", 40)
    assert parse_unit("rect") == ("rect", 40)
    assert parse_unit("superpixel200") == ("superpixel", 200)
    assert parse_unit("sp") == ("superpixel", 300)
    for bad in ("rect1", "hexagon", "rect-3"):
        with pytest.raises(InputError, match="unit|size"):
            parse_unit(bad)


def test_rectangles_partition_each_frame():
    units = UnitSet.rectangles(3, (50, 90), size=40)  # 2 x 3 cells, edge cells cut
    assert len(units) == 3 * 6 and units.count(1) == 6
    assert units.frame_of(7) == 1 and list(units.frame_of([0, 6, 17])) == [0, 1, 2]
    u = units.unit(6 + 5)
    assert (u.frame, u.local, u.bbox) == (1, 5, (40, 80, 50, 90))
    total = np.zeros((50, 90), int)
    for i in range(6, 12):
        m = units.mask(i)
        assert m.sum() == (m[units.unit(i).bbox[0]:units.unit(i).bbox[2],
                             units.unit(i).bbox[1]:units.unit(i).bbox[3]]).sum()
        total += m
    assert (total == 1).all()
    values = np.zeros((50, 90))
    values[:40, :40] = 1.0
    means = units.unit_means(0, values)
    assert means[0] == 1.0 and np.all(means[1:] == 0)
    with pytest.raises(InputError, match="does not exist"):
        units.unit(18)


def test_frames_and_superpixels():
    frames = UnitSet.frames(4, (20, 30))
    assert len(frames) == 4 and frames.mask(2).all() and frames.unit(2).frame == 2
    rng = np.random.default_rng(0)
    video = [np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((10, 10, 1))).astype(np.uint8) for _ in range(2)]
    sp = UnitSet.from_spec("superpixel30", video)
    assert sp.kind == "superpixel" and sp.num_frames == 2
    for t in range(2):
        fm = sp.frame_map(t)
        assert fm.min() == 0 and fm.max() == sp.count(t) - 1
    i = int(sp.offsets[1]) + 3
    m = sp.mask(i)
    assert m.any() and np.array_equal(m, sp.frame_map(1) == 3)
    small = sp.frame_map_at(1, (30, 40))
    assert small.shape == (30, 40)


def test_unit_cost_is_the_polygon_cost_of_its_sample():
    from napari_hitl.simulate.cost import full_annotation_cost, image_clicks, sample_clicks, unit_clicks

    lab = np.zeros((60, 80), np.int16)
    units = UnitSet.rectangles(1, (60, 80), size=40)
    assert unit_clicks(units, 0, lab) == 1  # one class: one click
    lab[10:30, 20:50] = 1
    lab[40:50, 60:70] = 1
    for i in range(len(units)):
        y0, x0, y1, x1 = units.unit(i).bbox
        assert unit_clicks(units, i, lab) == sample_clicks(lab[y0:y1, x0:x1], np.ones((y1 - y0, x1 - x0), bool))
    # the cell (0:40, 0:40) cuts the object: only the outline inside the cell is traced
    assert 2 < unit_clicks(units, 0, lab) < image_clicks(lab)
    assert unit_clicks(UnitSet.frames(1, (60, 80)), 0, lab) == image_clicks(lab)
    assert full_annotation_cost(np.stack([lab, lab])) == 2 * image_clicks(lab)
