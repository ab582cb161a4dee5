"""Label propagation along flow (the baseline) and the temporal-consistency term."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.video.finetune import temporal_loss, warp_torch
from napari_hitl.video.flow import FlowCache
from napari_hitl.video.propagate import NO_LABEL, fill_nearest, human_labels, propagate_labels, working_shape


def _texture(h, w, seed):
    from scipy import ndimage

    t = ndimage.gaussian_filter(np.random.default_rng(seed).random((h, w)), 2.0)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def _moving_square(n=6, size=(128, 200), step=4):
    bg, fg = _texture(*size, 0), _texture(*size, 1)
    frames, truth = [], []
    for t in range(n):
        f, m = bg.copy(), np.zeros(size, np.int16)
        y, x = 30, 20 + step * t
        f[y:y + 60, x:x + 80] = fg[30:90, 20:100]
        m[y:y + 60, x:x + 80] = 1
        frames.append(f)
        truth.append(m)
    return np.stack(frames), np.stack(truth)


def test_propagation_carries_one_labelled_frame_to_all(tmp_path):
    frames, truth = _moving_square()
    flows = FlowCache(frames, tmp_path)
    labels = np.full(truth.shape, -1, np.int16)
    labels[2] = truth[2]
    out = propagate_labels(labels, flows)
    assert np.array_equal(out[2], truth[2])
    def iou(a, b):
        return ((a == 1) & (b == 1)).sum() / ((a == 1) | (b == 1)).sum()

    for t in range(len(frames)):
        assert iou(out[t], truth[t]) > 0.85, t
        if t != 2:  # better than copying the labelled frame: the labels moved with the square
            assert iou(out[t], truth[t]) > iou(truth[2], truth[t]) + 0.05, t
    # nothing labelled anywhere: the fallback class everywhere, no crash
    assert (propagate_labels(np.full(truth.shape, -1, np.int16), flows, fallback=0) == 0).all()


def test_fill_nearest():
    lab = np.full((5, 5), -1)
    lab[0, 0], lab[4, 4] = 1, 2
    out = fill_nearest(lab)
    assert out[1, 0] == 1 and out[3, 4] == 2 and (out >= 1).all()


def test_working_shape_multiple_of_32():
    h, w = working_shape((480, 854), 0.5)
    assert h % 32 == 0 and w % 32 == 0 and abs(h - 240) <= 16 and abs(w - 427) <= 16


def test_temporal_loss_zero_for_identical_and_positive_otherwise():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = torch.softmax(torch.from_numpy(rng.normal(size=(2, 3, 16, 20)).astype(np.float32)), 1)
    trusted = torch.ones(2, 16, 20, dtype=torch.bool)
    assert float(temporal_loss(p, p.clone(), trusted)) == 0.0
    q = torch.softmax(torch.from_numpy(rng.normal(size=(2, 3, 16, 20)).astype(np.float32)), 1)
    assert float(temporal_loss(p, q, trusted)) > 0.01
    # differences on untrusted pixels do not count
    mixed = p.clone()
    mixed[:, :, :8] = q[:, :, :8]
    half = trusted.clone()
    half[:, :8] = False
    assert float(temporal_loss(p, mixed, half)) == 0.0
    assert float(temporal_loss(p, mixed, trusted)) > 0.0
    assert float(temporal_loss(p, q, torch.zeros_like(trusted))) == 0.0


def test_warp_torch_matches_numpy_warp():
    torch = pytest.importorskip("torch")
    from napari_hitl.video.flow import warp_probs

    rng = np.random.default_rng(1)
    probs = rng.random((2, 24, 32)).astype(np.float32)
    flow = np.zeros((24, 32, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.5, -1.0
    ours = warp_torch(torch.from_numpy(probs)[None], torch.from_numpy(flow)[None])[0].numpy()
    ref = warp_probs(probs, flow)
    assert np.allclose(ours[:, 2:-2, 2:-4], ref[:, 2:-2, 2:-4], atol=1e-4)


def test_round_one_ranks_units_that_move_against_the_camera(tmp_path):
    """A panning background with a square moving the other way: motion scores put the square's
    units on top, and round one picks only from the more-moving half (diversity inside it)."""
    from napari_hitl.video.selection import motion_scores, select_units
    from napari_hitl.video.units import UnitSet

    h, w, n = 128, 200, 5
    bg = _texture(h, w + 40, 0)
    fg = _texture(60, 60, 1)
    frames, truth = [], []
    for t in range(n):
        f = bg[:, 2 * t:2 * t + w].copy()  # camera pans: background moves 2 px left per frame
        m = np.zeros((h, w), np.int16)
        x = 40 + 5 * t                     # the square moves 5 px right per frame
        f[34:94, x:x + 60] = fg
        m[34:94, x:x + 60] = 1
        frames.append(f)
        truth.append(m)
    flows = FlowCache(np.stack(frames), tmp_path)
    units = UnitSet.from_spec("rect20", frames)
    scores = motion_scores(units, flows)

    def on_square(i):
        (y0, x0, y1, x1), _ = units.local_mask(i)
        return truth[units.frame_of(i)][y0:y1, x0:x1].all()

    inside = np.array([on_square(i) for i in range(len(units))])
    assert scores[inside].mean() > 4 * scores[~inside].mean()
    assert np.median(scores[inside]) > np.percentile(scores[~inside], 90)
    feats = np.random.default_rng(0).random((len(units), 8)).astype(np.float32)
    picks = select_units(scores, feats, 6, np.zeros(len(units), bool), first_round=False)
    assert len(picks) == 6 and all(scores[i] >= np.median(scores) for i in picks)
    # a single frame has no motion: zeros, and round one falls back to diversity alone
    one = frames[:1]
    assert not motion_scores(UnitSet.from_spec("rect20", one), FlowCache(np.stack(one), tmp_path / "one")).any()


def test_human_labels_mark_every_other_pixel_no_label():
    from napari_hitl.project import HUMAN, MACHINE, PSEUDO, UNLABELLED

    labels = np.array([[0, 1, 2, 1]], np.uint16)
    prov = np.array([[HUMAN, HUMAN, MACHINE, PSEUDO]], np.uint8)
    got = human_labels(labels, prov)
    assert got.dtype == np.int16 and got.tolist() == [[0, 1, NO_LABEL, NO_LABEL]]
    assert (human_labels(labels, np.full_like(prov, UNLABELLED)) == NO_LABEL).all()
