"""Object metrics: F1 at IoU 0.5, the DSB2018 average precision, the aggregated Jaccard index."""

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.evaluate.metrics import aggregated_jaccard, average_precision, instance_iou, object_f1


def _two_nuclei():
    truth = np.zeros((20, 40), np.uint16)
    truth[5:15, 5:15] = 1
    truth[5:15, 15:25] = 2  # touching its neighbour
    return truth


def test_perfect_and_empty():
    truth = _two_nuclei()
    assert object_f1(truth, truth) == average_precision(truth, truth) == aggregated_jaccard(truth, truth) == 1.0
    empty = np.zeros_like(truth)
    assert object_f1(empty, empty) == 1.0 and object_f1(empty, truth) == 0.0 and aggregated_jaccard(empty, truth) == 0
    relabelled = np.where(truth == 1, 7, np.where(truth == 2, 3, 0)).astype(np.uint16)
    assert object_f1(relabelled, truth) == 1.0  # ids need not agree, only objects


def test_touching_objects_merged_into_one_count_as_wrong():
    truth = _two_nuclei()
    merged = (truth > 0).astype(np.uint16)  # one blob where there are two nuclei (IoU 0.5 each)
    ious = instance_iou(merged, truth)
    assert ious.shape == (2, 1) and np.allclose(ious, 0.5)
    assert object_f1(merged, truth) == 0.0  # IoU must exceed 0.5
    assert average_precision(merged, truth) == 0.0
    assert aggregated_jaccard(merged, truth) == pytest.approx(200 / 400)  # both map to the blob: 100+100 / 200+200


def test_partial_overlap_and_false_positives():
    truth = _two_nuclei()
    pred = truth.copy()
    pred[5:15, 22:25] = 0             # object 2 loses 30 of its 100 pixels: IoU 0.7
    pred[0:3, 30:33] = 9              # a false object
    assert object_f1(pred, truth) == pytest.approx(2 * 2 / (2 * 2 + 1))
    # thresholds 0.5..0.95: object 1 matches at all 10, object 2 at 0.5, 0.55, 0.6, 0.65 (IoU 0.7 > t)
    expected = np.mean([2 / 3] * 4 + [1 / 4] * 6)
    assert average_precision(pred, truth) == pytest.approx(expected)
    assert aggregated_jaccard(pred, truth) == pytest.approx((100 + 70) / (100 + 100 + 9))


def test_bad_input():
    with pytest.raises(InputError, match="shape"):
        object_f1(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(InputError, match="instance map"):
        object_f1(np.zeros((3, 3), float), np.zeros((3, 3), int))
    with pytest.raises(InputError, match="one-to-one"):
        object_f1(_two_nuclei(), _two_nuclei(), threshold=0.3)
