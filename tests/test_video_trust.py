"""Trusting the flow: per-pixel confidence, the per-video temporal weight from the labels'
evidence, labelled pixels anchored against the temporal term, round one's fallback to diversity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_hitl.errors import InputError
from napari_hitl.video.flow import FlowCache
from napari_hitl.video.trust import flow_evidence, motion_trust, pixel_confidence, temporal_weight


def _pan_video(n=10, h=64, w=96, step=4, seed=0):
    """A camera panning ``step`` px per frame over a smooth texture, a bright disk moving the
    other way; truth: 1 inside the disk."""
    rng = np.random.default_rng(seed)
    big = ndimage.gaussian_filter(rng.random((h, w + step * n)), 1.5)
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    frames, truth = [], []
    for t in range(n):
        f = big[:, step * t: step * t + w].copy()
        disk = (yy - 32) ** 2 + (xx - 20 - 5 * t) ** 2 <= 100
        f[disk] = 230
        frames.append(np.stack([f] * 3, -1))
        truth.append(disk.astype(np.int16))
    return np.stack(frames), np.stack(truth)


def _labels(truth, frames=(1, 3, 4, 6, 8)):
    lab = np.full(truth.shape, -1, np.int16)
    for k in frames:
        lab[k, 10:60] = truth[k, 10:60]
    return lab


def test_pixel_confidence_of_an_exact_shift():
    rng = np.random.default_rng(0)
    tex = ndimage.gaussian_filter(rng.random((40, 60)), 1.0)
    tex = (255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.uint8)
    a, b = tex[:, 3:53], tex[:, 0:50]  # content of a sits 3 px right in b
    fw = np.zeros((40, 50, 2), np.float32)
    fw[..., 0] = 3
    conf = pixel_confidence(a, b, fw, -fw)
    assert conf[:, :47].min() > 0.99  # exact flow, same colours
    assert (conf[:, 47:] == 0).all()   # lands outside frame b
    wrong = fw.copy()
    wrong[..., 0] = 8  # forward-backward agree but colours do not match
    assert pixel_confidence(a, b, wrong, -wrong)[:, :40].mean() < 0.5
    assert (pixel_confidence(a, b, fw, np.zeros_like(fw)) == 0).all()  # backward disagrees by 3 px
    with pytest.raises(InputError):
        pixel_confidence(a, b, fw, -fw, sigma_fb=0)


def test_temporal_weight_bounds():
    assert temporal_weight(0.1, 100, 0.2, 0.4) == 0.0
    assert temporal_weight(0.3, 100, 0.2, 0.4) == pytest.approx(50.0)
    assert temporal_weight(0.9, 100, 0.2, 0.4) == 100.0
    with pytest.raises(InputError):
        temporal_weight(0.5, 100, 0.4, 0.2)


@pytest.mark.parametrize("broken", ["shuffled", "noise"])
def test_weight_falls_to_zero_when_the_flow_is_inconsistent(tmp_path, broken):
    """Ordered frames: the flow explains the labels and the weight stays at its maximum; shuffled
    frames or frames of noise (no correspondence): the weight falls to 0 (plain fine-tuning)."""
    pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner

    frames, truth = _pan_video()
    rng = np.random.default_rng(1)
    bad = frames[rng.permutation(len(frames))] if broken == "shuffled" else \
        (rng.random(frames.shape) * 255).astype(np.uint8)
    labels = _labels(truth)
    s = FineTuneSettings(steps=1)
    weights = {}
    for name, f in (("ordered", frames), (broken, bad)):
        tuner = VideoFineTuner(f, FlowCache(f, tmp_path / name), 2, s, pretrained=False)
        weights[name], ev = tuner.temporal_weight(labels)
        assert 0 <= ev["trust"] <= 1 and ev["overlap"] > 0
    assert weights["ordered"] == pytest.approx(s.lam)
    assert weights[broken] <= 0.02 * s.lam


def test_flow_evidence_sees_labels_the_flow_moves_onto_the_wrong_class(tmp_path):
    """Same flow and confidence, but labels that contradict it (the object's labels moved 12 px
    off where the flow carries it): the agreement and the trust drop."""
    frames, truth = _pan_video()
    flows = FlowCache(frames, tmp_path)
    good = flow_evidence(_labels(truth), flows)
    wrong_truth = np.stack([np.roll(t, 12 * (k % 2), axis=1) for k, t in enumerate(truth)])
    bad = flow_evidence(_labels(wrong_truth), flows)
    assert good.agreement > 0.95 and bad.agreement < good.agreement - 0.1
    assert bad.trust < good.trust
    with pytest.raises(InputError, match="no labelled pixels"):
        flow_evidence(np.full(truth.shape, -1, np.int16), flows)


def test_temporal_term_never_moves_labelled_pixels():
    """The temporal term's gradient on the model's output at a labelled pixel is zero, so there the
    human label's cross-entropy alone decides; unlabelled pixels still get pulled."""
    torch = pytest.importorskip("torch")
    from napari_hitl.video.finetune import anchored, temporal_loss, warp_torch

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 16, 16, generator=g, requires_grad=True)
    probs = torch.softmax(logits, 1)
    ann = torch.zeros(2, 16, 16, dtype=torch.bool)
    ann[0, 4:12, 4:12] = True   # labelled pixels of frame a
    ann[1, 0:6, :] = True        # labelled pixels of its partner b
    flow = torch.zeros(1, 16, 16, 2)
    flow[..., 0] = 1.5
    weight = torch.ones(1, 16, 16)
    warped = warp_torch(anchored(probs[1:2], ann[1:2]), flow)
    loss = temporal_loss(anchored(probs[0:1], ann[0:1]), warped, weight)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[0][:, ann[0]].abs().max() == 0 and grad[1][:, ann[1]].abs().max() == 0
    assert grad[0][:, ~ann[0]].abs().max() > 0 and grad[1][:, ~ann[1]].abs().max() > 0
    # without the anchor the same term does move the labelled pixels
    probs = torch.softmax(logits, 1)
    (free,) = torch.autograd.grad(temporal_loss(probs[0:1], warp_torch(probs[1:2], flow), weight), logits)
    assert free[0][:, ann[0]].abs().max() > 0


def test_round_one_falls_back_to_diversity_when_the_flow_is_untrusted(tmp_path):
    """Frames of noise: motion is large everywhere but the flow is not trusted, so round one does
    not rank by it (diversity alone); a smooth moving video keeps the motion ranking."""
    from napari_hitl.video.session import VideoSession

    from test_video_round import _video

    frames, _ = _video(step=2)  # a textured disk moving 2 px a frame over a still background
    noise = (np.random.default_rng(2).random(frames.shape) * 255).astype(np.uint8)
    feats = np.ones((len(frames), 4, 4, 6), np.float32)  # (T, D, h/16, w/16) of a 64x96 video
    ranked = {}
    for name, f in (("smooth", frames), ("noise", noise)):
        s = VideoSession(f, 2, "rect16", cache_dir=tmp_path / name, scale=1.0)
        scores, _, ranked[name] = s.scores(None, feats, first_round=True)
        assert (scores > 0).any() == ranked[name]
    assert ranked == {"smooth": True, "noise": False}
    assert motion_trust(FlowCache(noise, tmp_path / "noise")) < 0.1
    with pytest.raises(InputError):
        VideoSession(frames, 2, "rect16", cache_dir=tmp_path / "x", scale=1.0, motion_trust_min=2.0)


def test_label_agreement_falls_when_the_reference_contradicts_the_flow(tmp_path):
    """Labels carried along the flow onto the neighbours agree with the truth there; against a
    reference whose object sits 12 px off (a flow that moves the object wrongly looks the same)
    the class-balanced agreement drops, the object's pixels counting as much as the background's."""
    from napari_hitl.video.trust import agreement_factor, label_agreement

    frames, truth = _pan_video()
    flows = FlowCache(frames, tmp_path)
    labels = _labels(truth, frames=(2, 6))
    good, n_good = label_agreement(labels, truth, flows)
    moved = np.stack([np.roll(t, 12, axis=1) for t in truth])
    bad, n_bad = label_agreement(labels, moved, flows)
    assert n_good > 1000 and n_bad > 1000
    assert good > 0.9 and bad < good - 0.2
    # only the labelled frames' neighbours are looked at: unknown references give the prior
    assert label_agreement(labels, np.full_like(truth, -1), flows) == (1.0, 0)
    assert agreement_factor(bad, 0.6, 0.8) < agreement_factor(good, 0.6, 0.8) == 1.0
    with pytest.raises(InputError):
        label_agreement(labels, truth[:3], flows)


def test_labels_the_model_contradicts_along_the_flow_lower_the_weight(tmp_path):
    """With agreement bounds the weight from the flow's confidence is scaled by the agreement's
    factor (0 below agree_low: plain fine-tuning); without them the probe is not run."""
    pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings, VideoFineTuner

    frames, truth = _pan_video()
    labels = _labels(truth)
    flows = FlowCache(frames, tmp_path)
    s = FineTuneSettings(lam=100.0, trust_low=0.0, trust_high=0.01, agree_low=0.6, agree_high=0.8)
    tuner = VideoFineTuner(frames, flows, 2, s, pretrained=False)
    for agreement, want in ((0.5, 0.0), (0.7, 50.0), (0.9, 100.0)):
        tuner.probe = lambda labels, a=agreement: (a, 1234)
        lam, ev = tuner.evidence(labels)
        assert lam == pytest.approx(want) and ev["label_agreement"] == agreement and ev["agreement_pixels"] == 1234
    plain = VideoFineTuner(frames, flows, 2, FineTuneSettings(lam=100.0, trust_low=0.0, trust_high=0.01),
                           pretrained=False)
    plain.probe = lambda labels: pytest.fail("no agreement bounds: no probe")
    lam, ev = plain.evidence(labels)
    assert lam == 100.0 and "label_agreement" not in ev
    # the real probe predicts the neighbours and measures the agreement
    agreement, pixels = VideoFineTuner(frames, flows, 2, s, pretrained=False).probe(labels)
    assert 0 <= agreement <= 1 and pixels > 0
