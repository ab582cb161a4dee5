"""Fine-tuning on crops of frames larger than ``FineTuneSettings.crop``: the windows, the labels
and flow cut to them, and whole-frame steps unchanged for frames no larger than the window."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.video.flow import FlowCache

DX, DY = 3, -2  # px per frame the scene moves


def _translated_video(n=8, h=96, w=160):
    """Frames cut from one smooth texture at an offset moving (DX, DY) px per frame, so frame j
    at (y + DY (j - i), x + DX (j - i)) is exactly frame i at (y, x); truth: a bright square."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    big = ndimage.gaussian_filter(rng.random((h + 64, w + 64, 3)), (2, 2, 0))
    big = (big - big.min()) / (big.max() - big.min()) * 200 + 20
    yy, xx = np.mgrid[:h + 64, :w + 64]
    square = (abs(yy - 70) < 14) & (abs(xx - 90) < 20)
    big[square] = 240
    frames, truth = [], []
    for t in range(n):
        y0, x0 = 32 - DY * t, 32 - DX * t  # frame t + 1 at (y + DY, x + DX) is frame t at (y, x)
        frames.append(big[y0:y0 + h, x0:x0 + w].astype(np.uint8))
        truth.append(square[y0:y0 + h, x0:x0 + w].astype(np.int16))
    return np.stack(frames), np.stack(truth)


class _TranslationFlows(FlowCache):
    """The exact flow of :func:`_translated_video`: i -> j moves every pixel by (j - i) (DX, DY)."""

    def flow(self, i, j):
        self._check(i, j)
        h, w = np.asarray(self.frames[0]).shape[:2]
        out = np.empty((h, w, 2), np.float32)
        out[..., 0], out[..., 1] = DX * (j - i), DY * (j - i)
        return out


def _labels(truth, every=3):
    """Two 24 px squares of truth on every ``every``-th frame, -1 elsewhere."""
    labels = np.full(truth.shape, -1, np.int16)
    labels[::every, 10:34, 20:44] = truth[::every, 10:34, 20:44]
    labels[::every, 50:74, 110:134] = truth[::every, 50:74, 110:134]
    return labels


def test_crop_shape_follows_the_frame_and_never_exceeds_it():
    from napari_hitl.video.finetune import crop_shape

    assert crop_shape(480, 864, (256, 448)) == (256, 448)
    assert crop_shape(864, 480, (256, 448)) == (448, 256)  # portrait: the long side runs down
    assert crop_shape(256, 416, (256, 448)) == (256, 416)  # davis2016 at --scale 0.5: whole frames
    assert crop_shape(480, 416, (256, 448)) == (448, 256)
    assert crop_shape(480, 864, None) == (480, 864)
    for bad in ((250, 448), (448, 256), (0, 32)):
        with pytest.raises(InputError):
            crop_shape(480, 864, bad)


def test_windows_hold_labels_and_cut_frames_labels_and_flow_alike(tmp_path):
    """Each cross-entropy window holds labelled pixels; the batch's pixels and labels are the
    frame's and the labels' own pixels in that window; a pair shares one window; the pair's
    flow is the flow cut to it, its confidence 0 where the flow leaves the window."""
    torch = pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner

    frames, truth = _translated_video()
    labels = _labels(truth)
    s = FineTuneSettings(steps=1, crop=(64, 96), annotated_share=0.5)
    tuner = VideoFineTuner(frames, _TranslationFlows(frames, tmp_path), 2, s, pretrained=False)
    assert tuner.cropping and tuner.crop_shape == (64, 96)
    ch, cw = tuner.crop_shape
    annotated = np.flatnonzero((labels >= 0).any((1, 2)))
    labelled = {int(t): np.flatnonzero(labels[t] >= 0) for t in annotated}
    pick_p = np.full(len(annotated), 1.0 / len(annotated))
    y_all = torch.from_numpy(labels.astype(np.int64))
    starts, left = set(), 0
    for _ in range(40):
        idx, n_ce, pairs = tuner._draw_batch(annotated, pick_p, len(frames))
        win = tuner._draw_windows(idx, n_ce, pairs, labelled)
        assert len(win) == len(idx)
        for t, (y0, x0) in zip(idx, win):
            assert 0 <= y0 <= frames.shape[1] - ch and 0 <= x0 <= frames.shape[2] - cw
        x = tuner._cut(tuner._x, idx, win).numpy()
        y = tuner._cut(y_all, idx[:n_ce], win).numpy()
        assert x.shape == (len(idx), 3, ch, cw) and y.shape == (n_ce, ch, cw)
        for k, (t, (y0, x0)) in enumerate(zip(idx, win)):
            assert np.array_equal(x[k], frames[t, y0:y0 + ch, x0:x0 + cw].transpose(2, 0, 1))
            if k < n_ce:
                assert np.array_equal(y[k], labels[t, y0:y0 + ch, x0:x0 + cw])
                assert (y[k] >= 0).any()  # the window holds labelled pixels
                starts.add((t, y0, x0))
        for a, b, t, u in pairs:
            assert win[a] == win[b]
            (y0, x0) = win[a]
            fl, conf = (v.numpy() for v in tuner._pair_tensors(t, u, win[a]))
            assert np.array_equal(fl, tuner.flows.flow(t, u)[y0:y0 + ch, x0:x0 + cw])
            gx = np.arange(cw)[None] + fl[..., 0]
            gy = np.arange(ch)[:, None] + fl[..., 1]
            leaves = (gx < 0) | (gx > cw - 1) | (gy < 0) | (gy > ch - 1)
            assert (conf[leaves] == 0).all() and (conf[~leaves] > 0.99).all()
            left += int(leaves.any())
    assert len(starts) > 20 and left > 0  # windows vary, and some pairs' flow leaves them


def test_translation_flow_gives_zero_temporal_loss_in_a_shared_window(tmp_path):
    """On a video that only translates, a frame's pixels warped along the cropped flow from its
    partner's crop (same window) equal its own crop wherever the confidence is nonzero: the
    temporal loss of the content is 0. The partner cut at another window, or the flow's pixels
    that leave the window counted, give a loss above 0."""
    torch = pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner, temporal_loss, warp_torch

    frames, truth = _translated_video()
    s = FineTuneSettings(steps=1, crop=(64, 96), annotated_share=0.0)
    tuner = VideoFineTuner(frames, _TranslationFlows(frames, tmp_path), 2, s, pretrained=False)
    x_all = tuner._x.float() / 255.0
    ch, cw = tuner.crop_shape
    checked = 0
    for _ in range(10):
        idx, n_ce, pairs = tuner._draw_batch(np.array([0]), np.array([1.0]), len(frames))
        win = tuner._draw_windows(idx, n_ce, pairs, {0: np.flatnonzero(np.ones(frames.shape[1:3]))})
        x = tuner._cut(x_all, idx, win)
        for a, b, t, u in pairs:
            fl, conf = tuner._pair_tensors(t, u, win[a])
            warped = warp_torch(x[b:b + 1], fl[None])
            assert float(temporal_loss(x[a:a + 1], warped, conf[None])) < 1e-10
            # without the window's mask the border-padded pixels disagree
            assert float(temporal_loss(x[a:a + 1], warped, torch.ones_like(conf)[None])) > 1e-4
            # the partner cut at a window shifted by 8 px: the flow no longer matches
            y0, x0 = win[a]
            other = (y0, x0 + 8) if x0 + 8 <= frames.shape[2] - cw else (y0, x0 - 8)
            wrong = warp_torch(tuner._cut(x_all, [u], [other]), fl[None])
            assert float(temporal_loss(x[a:a + 1], wrong, conf[None])) > 1e-4
            checked += 1
    assert checked >= 10


@pytest.fixture
def one_thread():
    """Torch on one thread: the shared CPU makes more threads slower for these tiny fits."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit_state(frames, flows, labels, crop, lam, steps=2, weight_zero=False):
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner

    s = FineTuneSettings(steps=steps, crop=crop, lam=lam, adaptive=False, seed=5)
    tuner = VideoFineTuner(frames, flows, 2, s, pretrained=False)
    if weight_zero:
        tuner.temporal_weight = lambda labels: (0.0, {})
    fit = tuner.fit(labels)
    return {k: v.clone() for k, v in tuner.model.state_dict().items()}, fit, tuner


def _same(a, b):
    return all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.parametrize("lam", [0.0, 5.0])
def test_frames_no_larger_than_the_window_train_exactly_as_whole_frames(tmp_path, lam, one_thread):
    """Frames within the window: the default crop trains exactly as crop=None (whole frames),
    with and without the temporal term; no window draws touch the random streams."""
    pytest.importorskip("torch")
    frames, truth = _translated_video(h=64, w=96)
    flows = _TranslationFlows(frames, tmp_path)
    labels = _labels(truth)[:, :64, :96]
    whole, fit0, _ = _fit_state(frames, flows, labels, None, lam)
    default, fit1, tuner = _fit_state(frames, flows, labels, (64, 96), lam)
    assert not tuner.cropping and _same(whole, default)
    assert fit0["loss"] == fit1["loss"] and fit0["temporal"] == fit1["temporal"]
    larger, _, cropped = _fit_state(frames, flows, labels, (32, 64), lam)  # a smaller window crops
    assert cropped.cropping and not _same(whole, larger)


def test_cropped_weight_zero_repeats_plain_fine_tuning(tmp_path, one_thread):
    """With crops, fine-tune and fine-tune + temporal with one seed draw the same labelled
    windows, so a tuner whose temporal weight comes out 0 repeats plain fine-tuning exactly,
    and one with a weight differs from it."""
    pytest.importorskip("torch")
    frames, truth = _translated_video()
    flows = _TranslationFlows(frames, tmp_path)
    labels = _labels(truth)
    plain, _, tuner = _fit_state(frames, flows, labels, (64, 96), 0.0)
    assert tuner.cropping
    zero, _, _ = _fit_state(frames, flows, labels, (64, 96), 5.0, weight_zero=True)
    temporal, fit, _ = _fit_state(frames, flows, labels, (64, 96), 5.0)
    assert _same(plain, zero)
    assert fit["lam"] == 5.0 and not _same(plain, temporal)


def test_labelled_pixels_answer_as_flatnonzero_does():
    """The drawn labelled pixel is the one ``np.flatnonzero(labels >= 0)[i]`` names, for every
    i (so the windows, and every fit, stay bit-identical), from a count per row."""
    from napari_hitl.video.finetune import LabelledPixels

    rng = np.random.default_rng(3)
    for shape, share in (((37, 53), 0.3), ((5, 8), 1.0), ((16, 4), 0.02), ((1, 9), 0.5)):
        labels = np.where(rng.random(shape) < share, rng.integers(0, 3, shape), -1).astype(np.int16)
        labels.flat[rng.integers(labels.size)] = 1  # at least one labelled pixel
        flat, found = np.flatnonzero(labels >= 0), LabelledPixels(labels)
        assert len(found) == len(flat)
        assert [found[i] for i in range(len(flat))] == flat.tolist()
        for bad in (-1, len(flat)):
            with pytest.raises(IndexError):
                found[bad]


def test_a_fit_keeps_no_int64_copy_of_the_labels(tmp_path, one_thread):
    """Fully labelled frames larger than the window: the fit's own numpy memory stays under an
    int64 per pixel (before: the labels as int64, an int64 position per labelled pixel and an
    int64 copy of every labelled pixel for the class weights, each 8 bytes a pixel)."""
    import tracemalloc

    pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner

    frames, truth = _translated_video(n=8, h=192, w=320)
    labels = truth.astype(np.int16)  # every pixel labelled
    s = FineTuneSettings(steps=1, crop=(64, 96), lam=0.0, adaptive=False)
    tuner = VideoFineTuner(frames, _TranslationFlows(frames, tmp_path), 2, s, pretrained=False)
    tracemalloc.start()
    try:
        tuner.fit(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < labels.size * 8 / 2, peak
