"""Optical flow, forward-backward trust and the flow cache on synthetic moving squares."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_hitl.errors import InputError
from napari_hitl.video import flow as vf


def _texture(h, w, seed):
    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.random((h, w)), 2.0)
    t = (t - t.min()) / (t.max() - t.min())
    return (t * 255).astype(np.uint8)


def _square_video(shift=(3, 2), n=2, size=(96, 128), box=(30, 40, 30, 40)):
    """A textured square translating by ``shift`` (dx, dy) per frame over a static textured background."""
    h, w = size
    bg, fg = _texture(h, w, 0), _texture(h, w, 1)
    y0, x0, sh, sw = box
    frames, masks = [], []
    for t in range(n):
        f, m = bg.copy(), np.zeros((h, w), bool)
        ys, xs = y0 + t * shift[1], x0 + t * shift[0]
        f[ys:ys + sh, xs:xs + sw] = fg[y0:y0 + sh, x0:x0 + sw]
        m[ys:ys + sh, xs:xs + sw] = True
        frames.append(f)
        masks.append(m)
    return frames, masks


def test_warp_with_known_flow_moves_square_exactly():
    _, masks = _square_video(shift=(3, 2))
    flow = np.zeros(masks[0].shape + (2,), np.float32)
    flow[..., 0], flow[..., 1] = 3, 2  # frame 0 -> frame 1: every pixel moved by (3, 2)
    assert np.array_equal(vf.warp_labels(masks[1].astype(np.int32), flow) == 1, masks[0])
    probs = np.stack([~masks[1], masks[1]]).astype(np.float32)
    assert np.array_equal(vf.warp_probs(probs, flow)[1] > 0.5, masks[0])


def test_computed_flow_moves_translating_scene_exactly():
    # the whole scene translates (no occlusion inside the crop): the warped mask is exact
    big = _texture(140, 170, 5)
    big_mask = np.zeros(big.shape, bool)
    big_mask[50:90, 60:110] = True
    dx, dy = 4, 3
    f0, m0 = big[20:116, 20:148], big_mask[20:116, 20:148]
    f1, m1 = big[20 - dy:116 - dy, 20 - dx:148 - dx], big_mask[20 - dy:116 - dy, 20 - dx:148 - dx]
    for method in ("dis", "farneback"):
        fl = vf.compute_flow(f0, f1, method)
        assert np.abs(np.median(fl[..., 0]) - dx) < 0.05 and np.abs(np.median(fl[..., 1]) - dy) < 0.05
        assert np.array_equal(vf.warp_labels(m1.astype(np.uint8), fl) == 1, m0), method


def test_computed_flow_tracks_moving_square():
    # over a static background the flow is smoothed across the square's edge: close, not exact
    frames, masks = _square_video(shift=(3, 2), size=(160, 200), box=(40, 50, 60, 80))
    fl = vf.compute_flow(frames[0], frames[1])
    warped = vf.warp_labels(masks[1].astype(np.uint8), fl) == 1
    iou = (warped & masks[0]).sum() / (warped | masks[0]).sum()
    assert iou > 0.92
    inner = ndimage.binary_erosion(masks[0], iterations=4)
    assert np.allclose(np.median(fl[inner], axis=0), (3, 2), atol=0.1)
    assert np.abs(fl[inner] - (3, 2)).max() < 1.0


def test_consistency_mask_rejects_occluded_pixels_exact_flows():
    _, masks = _square_video(shift=(6, 0))
    fw = np.zeros(masks[0].shape + (2,), np.float32)
    bw = np.zeros_like(fw)
    fw[masks[0], 0] = 6  # square pixels of frame 0 move right by 6, background stays
    bw[masks[1], 0] = -6
    trusted = vf.consistency_mask(fw, bw)
    occluded = masks[1] & ~masks[0]  # background of frame 0 that the square covers in frame 1
    assert occluded.sum() == 6 * 30
    assert np.array_equal(~trusted, occluded)


def test_consistency_mask_rejects_occluded_pixels_computed_flows():
    frames, masks = _square_video(shift=(10, 0), size=(160, 200), box=(40, 50, 60, 80))
    fw = vf.compute_flow(frames[0], frames[1])
    bw = vf.compute_flow(frames[1], frames[0])
    trusted = vf.consistency_mask(fw, bw)
    occluded = masks[1] & ~masks[0]
    assert trusted[occluded].mean() < 0.2
    # far from the square (and the frame border) almost every pixel is trusted
    far = ~ndimage.binary_dilation(masks[0] | masks[1], iterations=8)
    far[:8], far[-8:], far[:, :8], far[:, -8:] = False, False, False, False
    assert trusted[far].mean() > 0.95
    assert trusted[ndimage.binary_erosion(masks[0], iterations=4)].mean() > 0.95
    # flows that send pixels out of the frame are not trusted
    out = np.zeros_like(fw)
    out[..., 0] = 1000
    assert not vf.consistency_mask(out, -out).any()


def test_flow_cache_computes_once_and_reads_from_disk(tmp_path, monkeypatch):
    frames, _ = _square_video(n=4)
    cache = vf.FlowCache(frames, tmp_path / "flows")
    calls = []
    real = vf.compute_flow
    monkeypatch.setattr(vf, "compute_flow", lambda a, b, m="dis": calls.append(1) or real(a, b, m))
    first = cache.flow(0, 1)
    assert len(calls) == 1 and cache.computed == 1
    files = list((tmp_path / "flows").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0]).dtype == np.float16
    assert not list((tmp_path / "flows").glob("*.tmp")) and not list((tmp_path / "flows").glob(".*"))
    second = cache.flow(0, 1)
    again = vf.FlowCache(frames, tmp_path / "flows").flow(0, 1)  # a new session reads the file
    assert len(calls) == 1
    assert np.array_equal(first, second) and np.array_equal(first, again)
    # a changed frame is a different flow, never the stale file
    changed = list(frames)
    changed[1] = np.roll(frames[1], 1, axis=1)
    vf.FlowCache(changed, tmp_path / "flows").flow(0, 1)
    assert len(calls) == 2
    cache.precompute(gaps=(1, 2, 3))
    assert len(list((tmp_path / "flows").glob("*.npy"))) == 2 + 2 * (3 + 2 + 1) - 1
    with pytest.raises(InputError, match="max_gap"):
        vf.FlowCache(frames, tmp_path, max_gap=1).flow(0, 2)


def test_bad_input_is_named():
    with pytest.raises(InputError, match="shape"):
        vf.compute_flow(np.zeros((10, 10), np.uint8), np.zeros((12, 10), np.uint8))
    with pytest.raises(InputError, match="unknown flow method"):
        vf.compute_flow(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), "magic")


def test_to_gray_stretches_uint16():
    img = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    g = vf.to_gray(img)
    assert g.dtype == np.uint8 and g.min() == 0 and g.max() == 255
