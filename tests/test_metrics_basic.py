"""Metrics on toy cases with known answers."""

import numpy as np
import pytest

from napari_hitl.evaluate.metrics import (boundary_iou, iou, iou_at_k, mean_iou, noc, pixel_accuracy)


def test_iou_with_ignore():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4] = True
    b[2:6] = True
    assert iou(a, b) == pytest.approx(20 / 60)
    ign = np.zeros_like(a)
    ign[4:6] = True           # the part of b outside a is ignored
    assert iou(a, b, ign) == pytest.approx(20 / 40)
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_noc_and_iou_at_k_known_answer():
    curve = [0.5, 0.8, 0.86, 0.88, 0.91, 0.95]
    assert noc(curve, 0.85) == 3
    assert noc(curve, 0.90) == 5
    assert noc([0.1] * 30, 0.9) == 20                  # never reached: the cap
    assert noc([0.1] * 25 + [0.95], 0.9) == 20         # reached only after the cap
    assert iou_at_k(curve, 1) == 0.5 and iou_at_k(curve, 3) == 0.86
    assert iou_at_k([0.95, 0.97], 5) == 0.97           # run stopped early: its last value


def test_mean_iou_and_pixel_accuracy_ignore_class():
    t = np.array([[0, 0, 1, 1], [2, 2, 11, 11]])
    p = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
    miou, per = mean_iou(p, t, num_classes=12, ignore_index=11, per_class=True)
    assert per == {0: pytest.approx(0.5), 1: pytest.approx(2 / 3), 2: 1.0}
    assert miou == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert pixel_accuracy(p, t, ignore_index=11) == pytest.approx(5 / 6)


def test_boundary_iou_punishes_edge_errors_more_than_iou():
    t = np.zeros((100, 100), bool)
    t[20:80, 20:80] = True
    p = np.zeros_like(t)
    p[22:82, 22:82] = True
    assert boundary_iou(t, t) == 1.0
    assert boundary_iou(p, t) < iou(p, t)
