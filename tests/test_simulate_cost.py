"""Polygon click cost on hand-made label maps."""

import numpy as np

from napari_hitl.simulate.cost import image_clicks, polygon_clicks, sample_clicks


def test_square_costs_four_vertices_plus_one():
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 12:25] = 1
    assert polygon_clicks(lab, background=0) == 5
    # without a free background, the background's own outline (the image frame) is traced too
    assert polygon_clicks(lab) == 10
    lab2 = lab.copy()
    lab2[25:35, 25:35] = 2
    assert polygon_clicks(lab2, background=0) == 10
    lab2[30:33, 2:5] = 11
    assert polygon_clicks(lab2, background=0, ignore_index=11) == 10


def test_triangle_and_enclosed_background_hole():
    lab = np.zeros((60, 60), np.int32)
    yy, xx = np.mgrid[:60, :60]
    lab[(yy >= 10) & (yy <= 50) & (xx >= 10) & (xx - 10 <= (yy - 10))] = 1   # right triangle
    assert polygon_clicks(lab, background=0) == 3 + 1
    ring = np.zeros((60, 60), np.int32)
    ring[10:50, 10:50] = 1
    ring[20:30, 20:30] = 0   # an enclosed background hole must be cut out: 4 + 1 more
    assert polygon_clicks(ring, background=0) == 5 + 5


def test_sample_costs():
    lab = np.zeros((30, 30), np.int32)
    sample = np.zeros((30, 30), bool)
    sample[5:25, 5:25] = True
    assert sample_clicks(lab, sample) == 1             # one class: one click
    assert sample_clicks(lab, np.zeros_like(sample)) == 0
    lab[:, 15:] = 1                                    # a straight split through the rectangle
    # fill named with 1 click; the other part: its outline inside the sample is one straight
    # segment (2 vertices) and it is named with 1 click; the sample border is free
    assert sample_clicks(lab, sample) == 1 + 2 + 1
    lab2 = np.zeros((30, 30), np.int32)
    lab2[10:15, 10:15] = 2                             # a square wholly inside: 4 + 1, plus the fill
    assert sample_clicks(lab2, sample) == 1 + 5
    assert image_clicks(lab2) == 1 + 5
