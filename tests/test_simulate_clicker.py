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


class _DiskEngine:
    """A toy engine: the mask is the union of 12 px disks around the positive clicks."""

    def predict(self, region, prev_mask=None, others=()):
        yy, xx = np.mgrid[:64, :64]
        out = np.full((64, 64), -1.0, np.float32)
        for c in region.clicks:
            disk = (yy - c.y) ** 2 + (xx - c.x) ** 2 <= 144
            out[disk] = 1.0 if c.positive else -1.0
        return out


def test_run_clicks_records_each_click_and_stops_at_the_target():
    from napari_hitl.simulate.clicker import run_clicks

    yy, xx = np.mgrid[:64, :64]
    truth = (yy - 32) ** 2 + (xx - 32) ** 2 <= 144
    run = run_clicks(_DiskEngine(), truth, max_clicks=5, stop_at=0.9)
    assert len(run.clicks) == 1 and run.clicks[0].positive and (run.clicks[0].y, run.clicks[0].x) == (32, 32)
    assert run.final_iou == 1.0 and run.mask.sum() == truth.sum() and len(run.ms) == 1
    full = run_clicks(_DiskEngine(), truth, max_clicks=4)  # no target: ious padded once no error is left
    assert full.ious == [1.0] * 4 and len(full.clicks) == 1
    done = run_clicks(_DiskEngine(), truth, max_clicks=5, start=truth, stop_at=0.9)
    assert done.clicks == [] and done.mask.sum() == truth.sum()
