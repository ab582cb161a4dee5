"""Click robot: clicks the largest error at its interior-most point, never on ignored pixels."""

import numpy as np

from napari_hitl.simulate.clicker import next_click


def test_click_lands_in_largest_error_at_its_centre():
    truth = np.zeros((60, 60), bool)
    truth[10:21, 10:21] = True      # small missed square 11x11
    truth[30:55, 5:40] = True       # large missed rectangle 25x35, centre (42, 22)
    pred = np.zeros_like(truth)
    c = next_click(pred, truth)
    assert c.positive and truth[int(c.y), int(c.x)]
    assert (c.y, c.x) == (42, 22)


def test_false_alarm_gives_negative_click():
    truth = np.zeros((40, 40), bool)
    truth[5:10, 5:10] = True
    pred = truth.copy()
    pred[20:35, 20:35] = True
    c = next_click(pred, truth)
    assert not c.positive and (c.y, c.x) == (27, 27)


def test_no_error_gives_none_and_ignore_is_never_clicked():
    truth = np.zeros((30, 30), bool)
    truth[5:25, 5:25] = True
    assert next_click(truth, truth) is None
    ignore = np.zeros_like(truth)
    ignore[5:25, 5:25] = True
    ignore[14:16, 14:16] = False   # only a tiny pocket is scored
    c = next_click(np.zeros_like(truth), truth, ignore)
    assert not ignore[int(c.y), int(c.x)] and 14 <= c.y <= 15 and 14 <= c.x <= 15
    assert next_click(np.zeros_like(truth), truth, truth) is None


def test_image_border_counts_as_border():
    truth = np.zeros((20, 40), bool)
    truth[:, :20] = True            # touches the image edge on three sides
    c = next_click(np.zeros_like(truth), truth)
    assert 9 <= c.y <= 10 and 9 <= c.x <= 10
