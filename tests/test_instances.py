"""Instances: the decoder splits touching objects, the instance head trains, old checkpoints load,
per-object confidence ranks and pseudo-labels whole objects, corrections go object by object."""

import logging

import numpy as np
import pytest

from napari_hitl.active.objects import object_confidence, object_uncertainty, objects_from_prediction, pseudo_instances
from napari_hitl.active.ranking import SCORERS, rank_images, score_maps
from napari_hitl.errors import InputError
from napari_hitl.model.instances import (check_instances, decode_instances, instance_targets, instances_from_maps,
                                         semantic_from_instances)
from napari_hitl.project import HUMAN, PSEUDO, UNLABELLED

torch = pytest.importorskip("torch")


def _two_touching(h=64, w=84):
    """Two overlapping discs (ids 1, 2) sharing a straight edge."""
    yy, xx = np.mgrid[:h, :w]
    a = np.hypot(yy - 32, xx - 28) < 15
    b = np.hypot(yy - 32, xx - 54) < 15
    inst = np.zeros((h, w), np.uint32)
    inst[a & (xx < 41)] = 1
    inst[b & (xx >= 41)] = 2
    return inst


def test_decoder_splits_touching_discs_on_a_predicted_boundary():
    inst = _two_touching()
    fg = (inst > 0).astype(np.float32)
    boundary, distance = instance_targets(inst)
    assert boundary[:, 40:42].any() and boundary[32, 28] == 0  # a line between them, none at a centre
    assert distance[inst == 1].max() == pytest.approx(1.0) and distance[32, 28] > 0.8 and distance[0, 0] == 0
    out = decode_instances(fg, boundary, distance)
    assert out.dtype == np.uint32 and out.max() == 2
    left, right = np.unique(out[inst == 1]), np.unique(out[inst == 2])
    assert len(left) == 1 and len(right) == 1 and left[0] != right[0] and 0 not in (left[0], right[0])
    # without the boundary and with a flat distance map the same pixels are one object
    assert decode_instances(fg, np.zeros_like(fg), np.where(fg > 0, 0.9, 0)).max() == 1
    # from class probabilities: each object gets the class with most probability inside
    probs = np.stack([1 - fg, fg * 0.3, fg * 0.7])
    got, classes = instances_from_maps(probs, boundary, distance)
    assert got.max() == 2 and classes == {1: 2, 2: 2}
    assert instances_from_maps(probs, boundary, distance, stuff=(1, 2))[0].max() == 0


def test_saddle_merge_joins_one_object_cut_in_two_and_keeps_touching_objects_apart():
    from napari_hitl.model.instances import merge_shallow_saddles

    yy, xx = np.mgrid[:64, :84]
    # one large disc whose distance map has two bumps (two seeds): the watershed cuts it in two
    disc = (np.hypot(yy - 32, xx - 42) < 26).astype(np.uint32)
    _, dist = instance_targets(disc)
    bumps = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 40.0) + np.exp(-((yy - 32) ** 2 + (xx - 52) ** 2) / 40.0)
    dist = np.where(disc > 0, np.minimum(2 * dist, 1) * (0.8 + 0.2 * bumps), 0).astype(np.float32)
    fg = disc.astype(np.float32)
    none = np.zeros_like(fg)
    cut = decode_instances(fg, none, dist, seed_threshold=0.9)
    assert cut.max() == 2  # the seeds cut it
    whole = decode_instances(fg, none, dist, seed_threshold=0.9, merge_saddle=0.6)
    assert whole.max() == 1 and (whole > 0).sum() == (cut > 0).sum()
    # two touching discs: the distance map falls to 0 on their contact and the boundary is high there
    inst = _two_touching()
    boundary, distance = instance_targets(inst)
    f2 = (inst > 0).astype(np.float32)
    assert decode_instances(f2, boundary, distance, merge_saddle=0.6).max() == 2
    # a boundary line alone keeps them apart even when the distance map does not dip
    assert merge_shallow_saddles(inst, np.where(inst > 0, 0.9, 0), boundary.astype(np.float32), 0.6).max() == 2
    # and without one, a flat distance map joins them (ids: the lower one stays)
    joined = merge_shallow_saddles(inst, np.where(inst > 0, 0.9, 0), none[:, :84] * 0, 0.6)
    assert set(np.unique(joined)) == {0, 1}


def test_instance_maps_are_checked():
    with pytest.raises(InputError, match="integer"):
        check_instances(np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="shape"):
        check_instances(np.zeros((4, 4), np.uint16), (4, 5))
    with pytest.raises(InputError, match="2-D"):
        check_instances(np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(InputError, match="ids"):
        check_instances(np.array([[-1, 0]]))
    with pytest.raises(InputError, match="shape"):
        decode_instances(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))
    assert semantic_from_instances(_two_touching(), {1: 3}).max() == 3
    from napari_hitl.model.train import Sample

    with pytest.raises(InputError, match="instance map"):
        Sample(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16), np.zeros((8, 8), np.uint8),
               instances=np.zeros((8, 9), np.uint16))


def _touching_samples(n=4, size=64, seed=0):
    from napari_hitl.model.train import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        inst = np.roll(_two_touching(size, size + 20)[:, 10:10 + size], int(rng.integers(-8, 8)), axis=0)
        sem = (inst > 0).astype(np.uint16)
        img = np.clip(40 + 150 * sem + rng.normal(0, 10, sem.shape), 0, 255).astype(np.uint8)
        out.append(Sample(img, sem, np.full(sem.shape, HUMAN, np.uint8), f"t{i}", inst))
    return out


def _settings(**kw):
    from napari_hitl.model.train import TrainSettings

    base = dict(steps=30, batch_size=2, crop=64, lr=3e-3, checkpoint_every=0, scale_range=(1.0, 1.0))
    base.update(kw)
    return TrainSettings(**base)


def test_instance_head_trains_and_its_loss_falls():
    from napari_hitl.model.segnet import predict_instance_maps
    from napari_hitl.model.train import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order whatever ran before: one trajectory
    try:
        torch.manual_seed(0)
        trainer = Trainer(2, settings=_settings(), device="cpu", pretrained=False)
        res = trainer.train_round(_touching_samples())
    finally:
        torch.set_num_threads(threads)
    il = res.instance_losses
    assert len(il) == 30
    assert np.mean(il[-5:]) < 0.8 * np.mean(il[:5])
    probs, boundary, distance = predict_instance_maps(trainer.model, _touching_samples(1)[0].image, tile=64, overlap=16)
    assert probs.shape == (2, 64, 64) and boundary.shape == distance.shape == (64, 64)
    assert 0 <= boundary.min() and boundary.max() <= 1
    big = np.tile(_touching_samples(1)[0].image, (2, 3))[:100, :150]  # tiled: the head's maps blend like the classes
    probs, boundary, distance = predict_instance_maps(trainer.model, big, tile=64, overlap=16)
    assert probs.shape == (2, 100, 150) and boundary.shape == (100, 150)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    whole = predict_instance_maps(trainer.model, big, tile=1024)[1]
    assert np.abs(whole - boundary).mean() < 0.1


def test_semantic_only_samples_leave_the_instance_head_alone():
    from napari_hitl.model.train import Sample, Trainer

    torch.manual_seed(0)
    trainer = Trainer(2, settings=_settings(steps=3), device="cpu", pretrained=False)
    before = {k: v.clone() for k, v in trainer.model.inst_head.state_dict().items()}
    sem = [Sample(s.image, s.labels, s.provenance, s.name) for s in _touching_samples(2)]
    res = trainer.train_round(sem)
    assert res.instance_losses == [] and len(res.losses) == 3
    for k, v in trainer.model.inst_head.state_dict().items():
        assert torch.equal(v, before[k])


def test_checkpoint_without_instance_head_loads_with_a_fresh_one(tmp_path, caplog):
    from napari_hitl.model.train import Trainer, _atomic_save

    torch.manual_seed(0)
    old = Trainer(2, settings=_settings(steps=2), device="cpu", pretrained=False)
    old.train_round(_touching_samples(2))
    state = old.state_dict()
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("inst_head.")}
    ckpt = tmp_path / "old.pt"
    _atomic_save(state, ckpt)  # what a checkpoint from before the instance head holds
    with caplog.at_level(logging.INFO):
        new = Trainer(2, checkpoint_path=ckpt, settings=_settings(steps=2), device="cpu", pretrained=False)
    assert new.model.instance_head_fresh
    assert "no instance head" in caplog.text
    assert torch.equal(new.model.head.weight, old.model.head.weight)
    assert new.round == 1
    new.train_round(_touching_samples(2))  # and it trains on (optimiser state started fresh)
    again = Trainer(2, checkpoint_path=ckpt.with_name("x.pt"), device="cpu", pretrained=False)
    again.model.load_state_dict(new.model.state_dict())
    assert not again.model.instance_head_fresh


def test_object_confidence_and_the_objects_scorer_rank_an_unsure_object_first():
    inst = _two_touching()
    conf = np.full(inst.shape, 0.99, np.float32)
    sure = object_confidence(inst, conf)
    assert sure[1] == pytest.approx(0.99) and sure[2] == pytest.approx(0.99)
    shaky = conf.copy()
    shaky[inst == 2] = 0.6
    boundary = np.zeros(inst.shape, np.float32)
    oc = object_confidence(inst, shaky, boundary)
    assert oc[2] == pytest.approx(0.6, abs=1e-3) and oc[1] > 0.98
    half = object_confidence(inst, conf, np.where(inst == 1, 0.5, 0.0))  # a half-believed boundary
    assert half[1] == pytest.approx(0.99 * 0.5, abs=1e-3)
    assert object_uncertainty(oc, k=1) == pytest.approx(0.4, abs=1e-3) and object_uncertainty([1.0]) == 0.0
    pred = (inst > 0).astype(np.uint16)
    flat = np.zeros(inst.shape, np.float32)
    scores = [score_maps(conf, pred, 1 - flat, flat, index=0, instances=inst, boundary=boundary),
              score_maps(shaky, pred, 1 - flat, flat, index=1, instances=inst, boundary=boundary),
              score_maps(conf, pred, 1 - flat, flat, index=2)]
    assert "objects" in SCORERS
    assert rank_images(scores, "objects", 1).picked == [1]
    assert objects_from_prediction(pred).max() == 1  # the fallback: connected pieces


def test_pseudo_labels_propose_confident_objects_whole_and_unsure_ones_not_at_all():
    inst = _two_touching()
    oc = np.array([1.0, 0.97, 0.5], np.float32)
    bg = np.where(inst == 0, 0.99, 0.0).astype(np.float32)
    labels, prov, got = pseudo_instances(inst, oc, 0.9, {1: 1, 2: 1}, bg_conf=bg)
    assert (prov[inst == 1] == PSEUDO).all() and (labels[inst == 1] == 1).all()
    assert len(np.unique(got[inst == 1])) == 1 and got[inst == 1][0] > 0
    assert (prov[inst == 2] == UNLABELLED).all() and (got[inst == 2] == 0).all()
    # background next to the unsure object is left out too, far background is pseudo
    assert prov[32, 70] == UNLABELLED and prov[0, 0] == PSEUDO and labels[0, 0] == 0
    # a human-labelled object is never overwritten, nor an object overlapping it proposed
    human = np.zeros(inst.shape, np.uint8)
    human[inst == 1] = HUMAN
    hl = np.where(inst == 1, 5, 0).astype(np.uint16)
    hi = np.where(inst == 1, 7, 0).astype(np.uint32)
    labels2, prov2, got2 = pseudo_instances(inst, np.array([1.0, 0.99, 0.99]), 0.9, None, hl, human, hi)
    assert (labels2[inst == 1] == 5).all() and (prov2[inst == 1] == HUMAN).all() and (got2[inst == 1] == 7).all()
    assert (prov2[inst == 2] == PSEUDO).all() and got2[inst == 2][0] not in (0, 7)
    with pytest.raises(InputError, match="obj_conf"):
        pseudo_instances(inst, np.array([1.0]), 0.9)


def _blobs(h=80, w=100):
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros((h, w), np.uint32)
    for k, (cy, cx) in enumerate([(20, 20), (20, 60), (58, 40)], 1):
        truth[np.hypot(yy - cy, xx - cx) < 10] = k
    img = np.clip(40 + 160 * (truth > 0), 0, 255).astype(np.uint8)
    return img, truth


def test_corrections_delete_a_false_object_with_one_click():
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.simulate.corrections import correct_instances

    img, truth = _blobs()
    pred = truth.copy()
    pred[65:75, 80:92] = 9  # a false object
    fix = correct_instances(img, pred, truth, get_engine("graph"))
    assert fix.deleted == 1 and fix.kept == 3 and fix.added == fix.clicked == fix.drawn == 0
    assert fix.clicks == 2  # one to delete it, one to accept the image
    assert (fix.instances[65:75, 80:92] == 0).all()
    assert len(np.unique(fix.instances)) == 4


def test_corrections_add_a_missed_object_and_split_a_merge():
    from napari_hitl.evaluate.metrics import average_precision
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.simulate.corrections import correct_instances

    img, truth = _blobs()
    pred = truth.copy()
    pred[pred == 3] = 0             # missed
    pred[18:23, 20:60] = 1          # objects 1 and 2 merged by a bridge
    pred[pred == 2] = 1
    fix = correct_instances(img, pred, truth, get_engine("graph"))
    assert fix.deleted == 1         # the merge matches neither object at IoU > 0.5
    assert fix.added + fix.drawn == 3
    assert fix.clicks > 2
    assert average_precision(fix.instances, truth) > 0.7
    with pytest.raises(InputError, match="shape"):
        correct_instances(img, pred[:, :50], truth, get_engine("graph"))


def test_loop_in_instance_mode_answers_objects_and_trains_the_head():
    from napari_hitl.active.loop import LoopDriver, LoopSettings
    from napari_hitl.simulate.annotator import SimulatedAnnotator

    torch.manual_seed(0)
    samples = _touching_samples(4)
    images = [s.image for s in samples]
    insts = [s.instances for s in samples]
    settings = LoopSettings(strategy="objects", rounds=1, budget=1, instances=True, train=_settings(steps=3))
    annot = SimulatedAnnotator([s.labels for s in samples], instance_truths=insts)
    driver = LoopDriver(images, annot, 2, settings)
    rec = driver.run()[0]
    asked = sorted(driver.asked_images)
    assert len(asked) == 1 and rec.clicks > 0
    i = asked[0]
    assert np.array_equal(driver.instance_labels[i], insts[i]) and (driver.provenance[i] == HUMAN).all()
    assert len(driver.final_instances()) == 4 and driver.predictions[0].instances is not None
    assert all(s.instances is not None for s in driver.samples())
    with pytest.raises(InputError, match="instance mode"):
        LoopSettings(strategy="superpixel", instances=True)


def test_bench_scores_mean_and_worst_image():
    from napari_hitl.evaluate.bench_instances import score_instances

    _, truth = _blobs()
    off = truth.copy()
    off[off == 3] = 0  # one object of three missed
    sc = score_instances([truth, off], [truth, truth], ["good", "bad"])
    assert sc["worst_image"] == "bad" and sc["worst_f1"] == pytest.approx(0.8)
    assert sc["f1"] == pytest.approx(0.9) and sc["ap"] < 1 and sc["per_image"][0]["ap"] == 1.0
    with pytest.raises(InputError, match="nothing"):
        score_instances([], [], [])


def test_outlines_keep_only_edges_in_the_smallest_dtype():
    from napari_hitl.instances import outlines

    inst = np.zeros((12, 12), np.uint32)
    inst[2:6, 2:6], inst[2:6, 6:10] = 3, 4  # two touching objects
    out = outlines(inst)
    assert out.dtype == np.uint8 and out.shape == inst.shape
    assert out[2, 3] == 3 and out[3, 5] == 3 and out[3, 6] == 4  # borders, the shared one on both sides
    assert out[3, 3] == 0 and out[0, 0] == 0 and set(np.unique(out)) == {0, 3, 4}
    inst[0, 0] = 70000
    assert outlines(inst).dtype == np.uint32 and outlines(inst)[0, 0] == 70000
    with pytest.raises(InputError, match="2-D"):
        outlines(np.zeros((2, 2, 2), np.uint32))


def test_contrast_stretch_makes_a_dim_image_look_like_its_bright_copy():
    from napari_hitl.model.segnet import build_segnet, predict_instance_maps, stretch_contrast

    torch.manual_seed(0)
    bright = np.clip(_touching_samples(1)[0].image.astype(np.float32) / 255, 0, 1)
    dim = bright * 0.08  # fluorescence at a few percent of the range
    assert stretch_contrast(np.repeat(dim[..., None], 3, -1)).max() == pytest.approx(1.0)
    model = build_segnet(2, pretrained=False)
    assert float(model.input_stretch) == 1
    got = np.concatenate([np.atleast_3d(m.T).T for m in predict_instance_maps(model, dim)])
    want = np.concatenate([np.atleast_3d(m.T).T for m in predict_instance_maps(model, bright)])
    np.testing.assert_allclose(got, want, atol=1e-4)
    plain = build_segnet(2, pretrained=False, input_stretch=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "input_stretch"})
    assert float(plain.input_stretch) == 0  # a state from before the stretch: plain pixels, as it learned
    assert np.abs(predict_instance_maps(plain, dim)[1] - predict_instance_maps(plain, bright)[1]).max() > 1e-3


def test_checkpoint_from_before_the_stretch_keeps_plain_pixels_and_new_ones_keep_it(tmp_path, caplog):
    from napari_hitl.model.segnet import predict_proba
    from napari_hitl.model.train import Trainer, _atomic_save

    torch.manual_seed(0)
    new = Trainer(2, settings=_settings(steps=2), device="cpu", pretrained=False)
    new.train_round(_touching_samples(2))
    saved = new.save(tmp_path / "new.pt")
    assert float(Trainer(2, checkpoint_path=saved, device="cpu", pretrained=False).model.input_stretch) == 1
    state = new.state_dict()
    state["model"] = {k: v for k, v in state["model"].items() if k != "input_stretch"}
    _atomic_save(state, tmp_path / "old.pt")
    with caplog.at_level(logging.INFO):
        old = Trainer(2, checkpoint_path=tmp_path / "old.pt", device="cpu", pretrained=False)
    assert float(old.model.input_stretch) == 0 and "contrast stretch" in caplog.text
    assert torch.equal(old.model.head.weight, new.model.head.weight)
    img = (_touching_samples(1)[0].image // 6).astype(np.uint8)  # dim: the stretch changes what the net sees
    assert np.abs(predict_proba(old.model, img) - predict_proba(new.model, img)).max() > 1e-4


def test_instance_loss_weighs_object_pixels_by_their_class_weight():
    from napari_hitl.model.train import Trainer, class_weights

    samples = _touching_samples(1)
    for on in (True, False):
        trainer = Trainer(2, settings=_settings(instance_class_weights=on), device="cpu", pretrained=False)
        cw = class_weights(samples, 2)
        inst = trainer._prepare(samples, cw)[0][4]
        sem = samples[0].labels
        fg_w, bg_w = inst[..., 2][sem == 1].mean(), inst[..., 2][sem == 0].mean()
        if on:  # objects are the rarer class here: their insides weigh more than the background
            assert fg_w == pytest.approx(cw[1]) and bg_w == pytest.approx(cw[0]) and fg_w > bg_w
        else:
            assert fg_w == bg_w == 1


def test_bench_decoder_settings_default_to_the_decoders_and_pass_through():
    import argparse

    from napari_hitl.evaluate.bench_instances import decode_settings
    from napari_hitl.model.instances import DECODE_DEFAULTS

    keys = ("fg_threshold", "boundary_threshold", "seed_threshold", "merge_saddle")
    assert decode_settings(argparse.Namespace()) == {k: DECODE_DEFAULTS[k] for k in keys}
    got = decode_settings(argparse.Namespace(fg_threshold=0.8, boundary_threshold=None, seed_threshold=0.5,
                                             merge_saddle=0.6))
    assert got == {"fg_threshold": 0.8, "boundary_threshold": DECODE_DEFAULTS["boundary_threshold"], "seed_threshold": 0.5,
                   "merge_saddle": 0.6}


def test_full_reference_scores_along_one_round_or_one_round_per_score():
    import argparse

    from napari_hitl.evaluate.bench_instances import run_full

    inst = _two_touching(64, 84)
    img = np.where(inst > 0, 200, 30).astype(np.uint8)
    item = ("toy", img, (inst > 0).astype(np.uint16), inst)
    ds = {"num_classes": 2, "pool": [item], "heldout": [item]}
    base = dict(full_steps=4, full_evals=2, steps=2, rounds=0, batch=2, crop=64, seed=0)
    for one_round in (True, False):
        torch.manual_seed(0)
        out = run_full(ds, argparse.Namespace(**base, full_one_round=one_round), clicks=10, log=lambda *a: None)
        assert [c["steps"] for c in out["curve"]] == [2, 4] and out["one_round"] is one_round
        assert all(0 <= c["f1"] <= 1 for c in out["curve"])
        assert "size_norm" not in out
    # --full-size-norm scores the final model again with object-size normalisation
    torch.manual_seed(0)
    out = run_full(ds, argparse.Namespace(**base, full_one_round=True, full_size_norm=True), clicks=10,
                   log=lambda *a: None)
    assert 0 <= out["size_norm"]["f1"] <= 1 and out["size_norm"]["settings"]["diameter"] > 0
    assert len(out["size_norm"]["per_image"]) == 1


class _PointwiseNet(torch.nn.Module):
    """A stand-in segnet whose maps are pixelwise functions of the gray value (so they scale
    with the image): foreground where it is above 0.05, distance = the gray value, no
    boundary. It records the input sizes it saw."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward_all(self, x):
        self.seen.append(tuple(x.shape[2:]))
        g = x.mean(1, keepdim=True)
        fg = 40 * (g - 0.05)
        logits = torch.cat([torch.zeros_like(fg), fg], 1)
        dist = torch.logit(g.clamp(1e-3, 1 - 1e-3))
        inst = torch.cat([torch.full_like(g, -10.0), dist], 1)
        feats = torch.zeros(x.shape[0], 4, x.shape[2] // 16, x.shape[3] // 16)
        return logits, inst, feats


def _big_touching(r=40, h=150, w=230):
    """Two touching discs of radius ``r`` on a non-square canvas, and an image that is their distance map."""
    yy, xx = np.mgrid[:h, :w]
    cx = w // 2
    inst = np.zeros((h, w), np.uint32)
    inst[(np.hypot(yy - h // 2, xx - (cx - r)) < r) & (xx < cx)] = 1
    inst[(np.hypot(yy - h // 2, xx - (cx + r)) < r) & (xx >= cx)] = 2
    return inst, instance_targets(inst)[1]


def _matched(pred, truth, iou=0.85):
    ids = set()
    for t in (1, 2):
        vals, counts = np.unique(pred[truth == t], return_counts=True)
        best = vals[counts.argmax()]
        inter = counts.max()
        union = np.count_nonzero((pred == best) | (truth == t))
        if best == 0 or inter / union < iou:
            return False
        ids.add(int(best))
    return len(ids) == 2


def test_median_diameter_and_size_factor():
    from napari_hitl.model.instances import median_diameter, size_factor

    inst, _ = _big_touching(r=20)
    assert median_diameter(inst) == pytest.approx(40, rel=0.05)
    assert median_diameter(inst, min_objects=3) is None and median_diameter(np.zeros((5, 5), np.uint32)) is None
    assert size_factor(40, 24, 2.0, 4.0) == 1.0 and size_factor(None, 24, 2.0, 4.0) == 1.0
    assert size_factor(80, 24, 2.0, 4.0) == pytest.approx(0.3)
    assert size_factor(200, 24, 2.0, 4.0) == pytest.approx(0.25) and size_factor(6, 48, 2.0, 4.0) == pytest.approx(4.0)
    assert size_factor(6, 48, 2.0, 4.0, 2.0) == pytest.approx(2.0) and size_factor(200, 24, 2.0, 4.0, 2.0) == pytest.approx(0.25)


def test_inscribed_diameter_does_not_shrink_when_objects_are_cut_into_pieces():
    from napari_hitl.model.instances import inscribed_diameter, median_diameter

    yy, xx = np.mgrid[:200, :300]
    inst = np.zeros((200, 300), np.uint32)
    for k, cx in enumerate((60, 160, 250), 1):
        inst[np.hypot(yy - 100, xx - cx) < 30] = k
    cut = inst.copy()  # each disc cut in four quarters, as a decoder over-splitting a large nucleus does
    cut[(inst > 0) & (yy >= 100)] += 3
    cut[(inst > 0) & (xx >= np.array([0, 60, 160, 250])[inst])] += 6
    assert len(np.unique(cut)) == 13
    assert median_diameter(cut) < 0.8 * median_diameter(inst)
    assert inscribed_diameter(cut > 0) == inscribed_diameter(inst > 0) == pytest.approx(60, abs=2)
    assert inscribed_diameter(inst > 0, min_objects=4) is None and inscribed_diameter(np.zeros((4, 4), bool)) is None


def test_size_normalisation_predicts_large_objects_smaller_and_maps_back_to_the_input():
    from napari_hitl.model.segnet import (normalise_object_size, predict_proba_batch, predict_with_features,
                                          split_instance_maps)

    net = _PointwiseNet()
    net.input_stretch = 0.0
    inst, img = _big_touching()
    first = predict_with_features(net, img, with_features=False, with_instances=True, size_norm=None)[0]
    assert net.seen == [(160, 256)]
    cfg = {"diameter": 24.0, "tolerance": 2.0, "max_shrink": 4.0, "max_enlarge": 4.0,
           "max_pixels": 10**6, "min_objects": 1}
    normed = normalise_object_size(net, img, first, cfg)
    assert normed.shape == first.shape == (4,) + inst.shape and normed.dtype == np.float32
    assert net.seen[-1] == (64, 96)  # 150x230 at 24/80 = 0.3 -> 45x69, padded to multiples of 32
    np.testing.assert_allclose(normed[:2].sum(0), 1.0, atol=1e-5)
    # the objects decoded from the maps of the small image, brought back, are the two discs
    assert _matched(instances_from_maps(*split_instance_maps(normed, 2))[0], inst)
    # objects near the canonical size: the maps come back untouched, no second pass
    n = len(net.seen)
    assert normalise_object_size(net, img, first, dict(cfg, diameter=70.0)) is first and len(net.seen) == n
    # small objects are enlarged, but never past max_pixels: an image that large stays as it is
    _, small_img = _big_touching(r=5, h=60, w=90)
    small = predict_with_features(net, small_img, with_features=False, with_instances=True, size_norm=None)[0]
    n = len(net.seen)
    assert normalise_object_size(net, small_img, small, dict(cfg, max_pixels=60 * 90 // 2)) is small and len(net.seen) == n
    assert normalise_object_size(net, small_img, small, cfg).shape == small.shape
    assert net.seen[-1][0] >= 128 and net.seen[-1][1] >= 192  # 60x90 at about 24/10
    # the batch path and the one-image path normalise alike
    batch = predict_proba_batch(net, [img, img[:, :200]], with_instances=True, size_norm=cfg)
    one = predict_with_features(net, img, with_features=False, with_instances=True, size_norm=cfg)[0]
    np.testing.assert_allclose(batch[0], one, atol=1e-6)
    assert batch[1].shape == (4, 150, 200)


def test_size_normalisation_default_is_the_module_setting(monkeypatch):
    from napari_hitl.model import instances as inst_mod
    from napari_hitl.model.segnet import predict_instance_maps

    net = _PointwiseNet()
    net.input_stretch = 0.0
    _, img = _big_touching()
    monkeypatch.setattr(inst_mod, "SIZE_NORM", None)
    predict_instance_maps(net, img)
    assert len(net.seen) == 1
    monkeypatch.setattr(inst_mod, "SIZE_NORM", {"diameter": 24.0, "tolerance": 2.0, "max_shrink": 4.0,
                                                "max_enlarge": 4.0, "max_pixels": 10**6, "min_objects": 1})
    predict_instance_maps(net, img)
    assert len(net.seen) == 3 and net.seen[-1] == (64, 96)


def test_flipped_predictions_are_flipped_back_before_averaging():
    from napari_hitl.model.segnet import predict_with_features

    net = _PointwiseNet()
    net.input_stretch = 0.0
    inst, img = _big_touching(r=20, h=70, w=150)
    img = img * np.linspace(0.5, 1.0, img.shape[1])[None]  # no symmetry to hide a flip left unflipped
    plain = predict_with_features(net, img, with_features=False, with_instances=True, size_norm=None, flips=False)[0]
    n = len(net.seen)
    flipped = predict_with_features(net, img, with_features=False, with_instances=True, size_norm=None, flips=True)[0]
    assert len(net.seen) - n == 4
    np.testing.assert_allclose(flipped, plain, atol=1e-5)  # the stand-in is pixelwise: flips change nothing


def test_training_rescales_samples_to_the_object_diameter_and_augments_colour():
    from napari_hitl.model.instances import median_diameter
    from napari_hitl.model.train import Sample, Trainer

    inst, _ = _big_touching(r=30)
    sem = (inst > 0).astype(np.uint16)
    img = np.full(inst.shape + (3,), 50, np.uint8)
    img[..., 0] = 200
    smp = Sample(img, sem, np.full(sem.shape, HUMAN, np.uint8), "big", inst)
    trainer = Trainer(2, settings=_settings(object_diameter=20.0), device="cpu", pretrained=False)
    small = trainer._rescaled(smp)
    assert small.image.shape[:2] == (50, 77) and small.labels.shape == small.instances.shape == (50, 77)
    assert set(np.unique(small.instances)) == {0, 1, 2} and median_diameter(small.instances) == pytest.approx(20, rel=0.1)
    assert Trainer(2, settings=_settings(), device="cpu", pretrained=False)._rescaled(smp) is smp
    f = img.astype(np.float32) / 255
    cw, lab = np.ones(sem.shape, np.float32), np.argwhere(sem > 0)
    plain = dict(brightness=0.0, contrast=0.0)
    gray = Trainer(2, settings=_settings(gray_prob=1.0, **plain), device="cpu", pretrained=False)._crop(smp, f, cw, lab)[0]
    assert np.allclose(gray[0], gray[1]) and np.allclose(gray[0], f.mean(2)[0, 0])
    inv = Trainer(2, settings=_settings(invert_prob=1.0, **plain), device="cpu", pretrained=False)._crop(smp, f, cw, lab)[0]
    np.testing.assert_allclose(inv[:, 0, 0], 1 - f[0, 0], atol=1e-6)
