"""Segmentation net shapes/tiling, trainer loss, checkpoints (reload, atomicity, cancel), class weights."""

import threading

import numpy as np
import pytest

from napari_hitl.errors import CorruptFileError, InputError
from napari_hitl.io import as_float_rgb
from napari_hitl.model.segnet import (FEATURE_DIM, build_segnet, pool_features,
                                      predict_proba, predict_proba_batch, predict_with_features)
from napari_hitl.model.train import (Sample, Trainer, TrainSettings, class_weights, inverse_frequency_weights,
                                     load_checkpoint)
from napari_hitl.project import HUMAN, PSEUDO, UNLABELLED

torch = pytest.importorskip("torch")


def _toy(n=4, size=64, seed=0):
    """Bright disks on a dark noisy background, fully human-labelled."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.integers(16, size - 16, 2)
        lab = (np.hypot(yy - cy, xx - cx) < rng.integers(8, 14)).astype(np.uint16)
        img = np.clip(40 + 150 * lab + rng.normal(0, 15, lab.shape), 0, 255).astype(np.uint8)
        out.append(Sample(img, lab, np.full(lab.shape, HUMAN, np.uint8), name=f"toy{i}"))
    return out


def _settings(**kw):
    base = dict(steps=12, batch_size=2, crop=64, lr=3e-3, checkpoint_every=0, scale_range=(1.0, 1.0))
    base.update(kw)
    return TrainSettings(**base)


def test_predict_shapes_gray_rgb_odd_sizes_and_tiles():
    torch.manual_seed(0)
    model = build_segnet(3, pretrained=False)
    gray = (np.random.default_rng(0).random((37, 70)) * 65535).astype(np.uint16)
    p = predict_proba(model, gray)
    assert p.shape == (3, 37, 70) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
    rgb = np.random.default_rng(1).integers(0, 255, (90, 140, 3)).astype(np.uint8)
    tiled, feats = predict_with_features(model, rgb, tile=64, overlap=16)
    assert tiled.shape == (3, 90, 140) and feats.shape == (FEATURE_DIM, 6, 9)
    np.testing.assert_allclose(tiled.sum(0), 1, atol=1e-5)
    batch = predict_proba_batch(model, [rgb, gray, rgb], batch_size=2)
    np.testing.assert_allclose(batch[0], predict_proba(model, rgb), atol=1e-5)
    assert pool_features(feats).shape == (FEATURE_DIM,)
    seg = np.zeros((90, 140), int)
    seg[:, 70:] = 1
    assert pool_features(feats, seg).shape == (2, FEATURE_DIM)
    with pytest.raises(InputError, match="shape"):
        as_float_rgb(np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match="num_classes"):
        build_segnet(1, pretrained=False)


def test_a_model_made_for_prediction_predicts_what_it_did():
    # a batch worker folds the encoder's batch norms into its convolutions and goes channels-last
    import copy

    from napari_hitl.model.segnet import for_prediction

    torch.manual_seed(0)
    model = build_segnet(3, pretrained=False).eval()
    with torch.no_grad():  # batch norms that are not the identity, so folding them matters
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    fast = for_prediction(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    rgb = np.random.default_rng(2).integers(0, 255, (70, 100, 3)).astype(np.uint8)
    want, wf = predict_with_features(model, rgb, with_instances=True)
    got, gf = predict_with_features(fast, rgb, with_instances=True)
    assert got.shape == want.shape and got.flags.c_contiguous and gf.shape == wf.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(gf, wf, rtol=1e-4, atol=1e-4)


def test_class_weights_inverse_frequency_clipped():
    lab = np.zeros((10, 10), np.uint16)
    lab[:1] = 1  # 10 % class 1
    prov = np.full(lab.shape, HUMAN, np.uint8)
    prov[5:] = UNLABELLED  # ignored pixels do not count: class 1 is 20 % of the labelled ones
    w = class_weights([Sample(np.zeros((10, 10), np.uint8), lab, prov)], 3, clip=(0.1, 10))
    assert w[1] / w[0] == pytest.approx(4.0)
    assert w[2] == 10  # unseen class: upper clip
    # the one formula, shared with the video fine-tuning (class counts of its labelled pixels)
    np.testing.assert_array_equal(w, inverse_frequency_weights(np.array([40, 10, 0]), clip=(0.1, 10)))
    np.testing.assert_allclose(inverse_frequency_weights(np.array([30, 10, 0])), [2 / 3, 2.0, 5.0], rtol=1e-6)


def test_training_lowers_loss_and_checkpoint_reloads_identically(tmp_path):
    torch.manual_seed(0)
    samples = _toy()
    ckpt = tmp_path / "models" / "latest.pt"
    trainer = Trainer(2, checkpoint_path=ckpt, settings=_settings(steps=30), device="cpu")
    res = trainer.train_round(samples)
    assert res.steps_done == 30 and not res.cancelled and ckpt.exists()
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    pred_a = trainer.predict_proba(samples[0].image)
    again = Trainer(2, checkpoint_path=ckpt, settings=_settings(), device="cpu")
    assert again.round == 1 and again.global_step == 30 and not again.round_in_progress
    np.testing.assert_array_equal(again.predict_proba(samples[0].image), pred_a)
    # the next round fine-tunes from there, it does not restart
    res2 = again.train_round(samples, steps=3)
    assert res2.round == 2 and again.global_step == 33
    # a class added to the project: the saved model grows its head, the old classes are kept
    saved = load_checkpoint(ckpt)["model"]
    grown = Trainer(3, checkpoint_path=ckpt, device="cpu")
    head = grown.model.state_dict()
    assert head["head.weight"].shape[0] == 3
    assert torch.equal(head["head.weight"][:2], saved["head.weight"]) and torch.equal(head["head.bias"][:2],
                                                                                      saved["head.bias"])
    assert grown.global_step == 33 and grown.predict_proba(samples[0].image).shape[0] == 3
    grown.save(tmp_path / "three.pt")
    with pytest.raises(InputError, match="classes"):
        Trainer(2, checkpoint_path=tmp_path / "three.pt", device="cpu")


def test_cancel_mid_round_leaves_last_checkpoint_intact_and_resumes(tmp_path):
    torch.manual_seed(0)
    samples = _toy(2)
    ckpt = tmp_path / "latest.pt"
    trainer = Trainer(2, checkpoint_path=ckpt, settings=_settings(steps=4), device="cpu")
    trainer.train_round(samples)
    saved = ckpt.read_bytes()
    stop = threading.Event()
    seen = []

    def progress(step, total, loss):
        seen.append((step, total))
        if step == 3:
            stop.set()

    res = trainer.train_round(samples, steps=10, progress=progress, should_stop=stop)
    assert res.cancelled and res.steps_done == 3 and seen[-1] == (3, 10)
    assert ckpt.read_bytes() == saved  # untouched by the cancelled round
    assert not list(tmp_path.glob("*.tmp"))
    assert load_checkpoint(ckpt)["global_step"] == 4
    resumed = Trainer(2, checkpoint_path=ckpt, settings=_settings(), device="cpu")
    assert resumed.round == 1 and resumed.global_step == 4
    # the in-memory trainer finishes the interrupted round instead of starting a new one
    stop.clear()
    res = trainer.train_round(samples)
    assert res.round == 2 and res.steps_done == 7 and trainer.global_step == 14


def test_a_prediction_between_steps_does_not_unfreeze_the_encoder_batchnorm():
    # a benchmark scoring the model in the middle of a round (bench loop --full-one-round) predicts
    # between two steps; the prediction leaves the whole model in train mode, BN included, and the
    # next step must still keep the encoder's BN statistics frozen
    torch.manual_seed(0)
    samples = _toy(2)
    trainer = Trainer(2, settings=_settings(steps=3), device="cpu", pretrained=False)
    bns = [m for m in trainer.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    before = [m.running_mean.clone() for m in bns]
    steps = trainer.iter_round(samples)
    next(steps)
    predict_proba(trainer.model, samples[0].image)
    assert all(m.training for m in bns)  # what the prediction leaves behind
    next(steps)
    assert not any(m.training for m in bns)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    steps.close()


def test_pseudo_weight_and_unlabelled_pixels(tmp_path):
    s = _toy(1)[0]
    prov = np.full(s.labels.shape, PSEUDO, np.uint8)
    prov[:, :8] = UNLABELLED
    trainer = Trainer(2, settings=_settings(steps=2, pseudo_weight=0.25), device="cpu", pretrained=False)
    res = trainer.train_round([Sample(s.image, s.labels, prov)])
    assert res.steps_done == 2 and np.isfinite(res.losses).all()
    with pytest.raises(InputError, match="no labelled pixels"):
        trainer.train_round([Sample(s.image, s.labels, np.zeros_like(prov))])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="bad.pt"):
        load_checkpoint(bad)


def test_samples_from_project_reads_only_labelled_images(tmp_path):
    from PIL import Image

    from napari_hitl.model.train import samples_from_project
    from napari_hitl.project import MACHINE, Project

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 20), 40 * i, np.uint8)).save(src / f"im{i}.png")
    project = Project.create(tmp_path / "proj", src, classes=["background", "cell"])
    try:
        names = [r.name for r in project.images]
        lab = np.zeros((16, 20), np.uint16)
        lab[4:8, 4:8] = 1
        project.commit_labels(names[1], lab, source="human")
        where = np.zeros((16, 20), bool)
        where[10:, :] = True
        project.commit_labels(names[2], lab, source="machine", where=where)
        samples = samples_from_project(project)
        assert [s.name for s in samples] == names[1:]
        assert np.all(samples[0].provenance == HUMAN) and np.array_equal(samples[0].labels, lab)
        assert np.all(samples[1].provenance[where] == MACHINE) and np.all(samples[1].provenance[~where] == UNLABELLED)
        assert samples[1].image.shape == (16, 20)
    finally:
        project.close()


def test_folding_the_click_models_batch_norms_keeps_its_answer():
    # the click model and the segmentation model fold their norms with one helper (backbone.fold_batchnorm):
    # the encoder's pairs and the decoder's conv-norm-relu sequentials
    import copy

    from napari_hitl.interactive.clicknet_net import build_clicknet

    torch.manual_seed(0)
    net = build_clicknet(pretrained=False).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    fused = copy.deepcopy(net).fuse_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(1, 3, 96, 96)
    maps = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        want = net.decode(net.encode(x), maps)
        got = fused.decode(fused.encode(x), maps)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
