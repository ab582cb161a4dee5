"""One round on a tiny synthetic video: pick, label, fine-tune with the temporal term, predict."""

from __future__ import annotations

import numpy as np
import pytest



def _video(n=10, h=64, w=96, step=7):
    """A red disk moving fast over a gray-green textured background; truth: 1 inside the disk."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    bg = ndimage.gaussian_filter(rng.random((h, w)), 1.5)
    bg = (bg - bg.min()) / (bg.max() - bg.min())
    yy, xx = np.mgrid[:h, :w]
    frames, truth = [], []
    for t in range(n):
        cy, cx, r = 32 + 6 * np.sin(t / 2), 14 + step * t, 11 + 2 * np.cos(t / 3)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        img = np.stack([bg * 120 + 40, bg * 150 + 60, bg * 120 + 40], -1)
        img[disk] = (200, 40, 40)
        img[disk] += 25 * rng.random(int(disk.sum()))[:, None]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        truth.append(disk.astype(np.int16))
    return np.stack(frames), np.stack(truth)


def test_round_beats_propagation_only(tmp_path):
    pytest.importorskip("torch")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CPU: more threads make this tiny model slower
    try:
        _round(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _round(tmp_path):
    import torch

    from napari_hitl.evaluate.annotate import annotate_budget
    from napari_hitl.evaluate.bench_video import score
    from napari_hitl.simulate.cost import unit_clicks
    from napari_hitl.video.finetune import FineTuneSettings
    from napari_hitl.video.session import VideoSession

    torch.manual_seed(0)
    frames, truth = _video()
    session = VideoSession(frames, 2, "frame", cache_dir=tmp_path, scale=1.0,
                           settings=FineTuneSettings(steps=40, lam=1.0, seed=0))
    session.precompute_flows()
    assert session.work_shape == (64, 96)
    tuner = session.new_tuner()
    probs, feats = tuner.predict(with_features=True)
    budget = unit_clicks(session.units, 0, truth[0])  # about one frame's worth of clicks
    rec = annotate_budget(session, truth, budget, probs, feats, first_round=True)
    assert len(rec.units) == 1 and 0 < rec.clicks <= budget and session.clicks == rec.clicks
    t = session.units.frame_of(rec.units[0])
    assert np.array_equal(session.labels[t], truth[t]) and (session.labels[np.arange(10) != t] == -1).all()

    prop = score(session.propagate(), truth, session.flows)
    fit = tuner.fit(session.work_labels())
    assert fit["steps"] == 40 and np.isfinite(fit["loss"]) and fit["temporal"] >= 0
    ours = score(session.labels_from_probs(tuner.predict()), truth, session.flows)
    assert ours["miou"] > prop["miou"] + 0.02, (ours, prop)
    assert ours["miou"] > 0.85
    # the next round never asks for a unit twice
    probs, feats = tuner.predict(with_features=True)
    rec2 = annotate_budget(session, truth, budget, probs, feats, first_round=False)
    assert not set(rec2.units) & set(rec.units)


def test_temporal_term_adds_pairs_to_the_same_labelled_batches(tmp_path):
    """Fine-tune and fine-tune + temporal with one seed see the same labelled frames at each step,
    so they differ only by the temporal term; each pair's partner lies one of ``gaps`` away."""
    pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings
    from napari_hitl.video.session import VideoSession

    frames, truth = _video()
    session = VideoSession(frames, 2, "frame", cache_dir=tmp_path, scale=1.0,
                           settings=FineTuneSettings(steps=5, seed=3, annotated_share=0.5))
    plain, temporal = session.new_tuner(0.0, pretrained=False), session.new_tuner(pretrained=False)
    annotated = np.array([1, 4, 8])
    pick_p = np.array([0.5, 0.25, 0.25])
    anchored = 0
    for _ in range(50):
        idx0, n0, pairs0 = plain._draw_batch(annotated, pick_p, len(frames))
        idx1, n1, pairs1 = temporal._draw_batch(annotated, pick_p, len(frames))
        assert n0 == n1 == 4 and idx0 == idx1[:4] and pairs0 == [] and len(pairs1) == 2
        assert set(idx0) <= set(annotated.tolist())
        for a, b, t, u in pairs1:
            assert idx1[a] == t and idx1[b] == u and abs(t - u) in (1, 2, 3) and 0 <= u < len(frames)
            anchored += a < n1
    assert 30 < anchored < 70  # about half of the 100 pairs start at a labelled batch frame


def test_fine_tune_and_temporal_start_paired(tmp_path):
    """Fine-tune and fine-tune + temporal from one session and seed start from the same decoder
    weights and are the same model up to the probe step (the temporal term enters only there),
    so what differs at the end is the temporal term; another seed starts elsewhere."""
    torch = pytest.importorskip("torch")
    from napari_hitl.video.finetune import FineTuneSettings
    from napari_hitl.video.session import VideoSession

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frames, truth = _video()
        session = VideoSession(frames, 2, "frame", cache_dir=tmp_path, scale=1.0,
                               settings=FineTuneSettings(steps=6, seed=3, probe_share=0.5, trust_low=0.0,
                                                         trust_high=0.01))
        plain, temporal = session.new_tuner(0.0, pretrained=False), session.new_tuner(pretrained=False)
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),  # noqa: E731
                                                                   b.model.state_dict().values()))
        assert same(plain, temporal)
        session.settings = FineTuneSettings(steps=6, seed=4)
        assert not same(plain, session.new_tuner(0.0, pretrained=False))
        labels = np.full(truth.shape, -1, np.int16)
        labels[[2, 6]] = truth[[2, 6]]
        runs = [t.begin_round(labels) for t in (plain, temporal)]
        assert runs[0].probe_step == runs[1].probe_step == 3
        for t, run in zip((plain, temporal), runs):
            t.train(run, run.probe_step)
        assert same(plain, temporal) and runs[0].losses == runs[1].losses
        for t, run in zip((plain, temporal), runs):
            t.weigh(run)
            t.train(run, run.steps)
        assert runs[0].lam == 0 and runs[1].lam > 0 and not same(plain, temporal)
        assert runs[0].ces[:3] == runs[1].ces[:3] and max(runs[1].temps[3:]) > 0
    finally:
        torch.set_num_threads(threads)
