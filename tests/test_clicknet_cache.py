"""Generation-2 click-model training: the feature cache holds what the frozen encoder computes,
a resumed run continues the same data stream, the normalised focal loss behaves, and the weights
and checkpoints it writes load with the network blocked."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _synthetic_items(n=2, h=120, w=160):
    """Images with a few touching rectangles and an ellipse as labelled objects (like bsds_regions)."""
    import cv2

    rng = np.random.default_rng(5)
    items = []
    for k in range(n):
        lab = np.zeros((h, w), np.int32)
        lab[20:70, 20:80] = 1
        lab[20:70, 80:120] = 2  # touches object 1: a merge candidate
        cv2.ellipse(lab, (110 - 10 * k, 95), (30, 15), 0, 0, 360, 3, -1)
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        img += (np.array([[0, 0, 0], [150, 40, 40], [40, 150, 40], [40, 40, 150]])[lab]).astype(np.uint8)
        items.append({"set": "bsds_regions", "name": f"s{k}", "image": img, "labels": lab, "ids": [1, 2, 3]})
    return items


@pytest.fixture(scope="module")
def net():
    from napari_hitl.interactive.clicknet_net import build_clicknet

    return build_clicknet(pretrained=True).eval()


def test_cache_round_trip(tmp_path, net):
    import torch

    from napari_hitl.interactive import clicknet_cache as cc

    items = _synthetic_items()
    share = {"bsds_regions": 1.0}
    cache = cc.build_cache(tmp_path / "c", items, 5, seed=3, share=share, net=net, shard_rows=2, merge_p=0.9,
                           log=lambda *a: None)
    assert len(cache) == 5 and len(cache.shards) == 3
    got = cache.get(np.arange(5))
    by_name = {it["name"]: it for it in items}
    for i in range(5):
        row = cache.row(i)
        patch, truth, valid = cc.render_row(by_name[row["name"]], row)
        with torch.no_grad():
            ref = net.encode(torch.from_numpy(patch.transpose(2, 0, 1).copy())[None])
        for name, (c, s) in cc.FEATURES.items():
            want = ref[name][0].numpy()
            assert got[name][i].shape == (c, s, s) and got[name][i].dtype == np.float16
            # float16 storage: equal up to half precision
            np.testing.assert_allclose(got[name][i].astype(np.float32), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
        np.testing.assert_array_equal(got["truth"][i], truth)
        np.testing.assert_array_equal(got["valid"][i], valid)
        assert got["kind"][i] == row["kind"]
        assert truth.sum() >= 20
    # rows differ (the check above could fail), and some target is a merge of two touching objects
    assert not np.allclose(got["f16"][0], got["f16"][1])
    assert any(cache.row(i)["merged"] for i in range(5))
    # a larger cache keeps the same first rows and completes the short last shard
    bigger = cc.build_cache(tmp_path / "c", items, 6, seed=3, share=share, net=net, shard_rows=2, merge_p=0.9,
                            log=lambda *a: None)
    assert len(bigger) == 6
    assert [bigger.row(i) for i in range(5)] == [cache.row(i) for i in range(5)]
    np.testing.assert_array_equal(bigger.get([4])["f4"][0], got["f4"][4])
    with pytest.raises(RuntimeError, match="other settings"):
        cc.build_cache(tmp_path / "c", items, 6, seed=4, share=share, net=net, shard_rows=2, log=lambda *a: None)


def test_nfl_loss_sanity():
    import torch

    from napari_hitl.interactive.train_clicknet import nfl_loss

    truth = torch.zeros(2, 1, 16, 16)
    truth[:, :, :8] = 1
    # equal uncertainty everywhere: the normalised focal weights are uniform, loss = alpha * log 2
    loss, up = nfl_loss(torch.zeros(2, 1, 4, 4), truth)
    assert up.shape == truth.shape
    assert math.isclose(float(loss), 0.5 * math.log(2), rel_tol=1e-5)
    good = torch.where(truth > 0, 6.0, -6.0)
    assert float(nfl_loss(good, truth)[0]) < 0.01 < float(nfl_loss(-good, truth)[0])
    # the gradient pushes each logit toward its target, and hard pixels weigh more than with cross-entropy
    logits = torch.where(truth > 0, 3.0, -3.0)
    logits[:, :, 0, 0] = -3.0  # one hard (wrong) pixel inside the object
    logits.requires_grad_(True)
    nfl_loss(logits, truth)[0].backward()
    g = logits.grad
    assert (g[truth > 0] < 0).all() and (g[truth == 0] > 0).all()
    bce_ratio = (1 - torch.sigmoid(torch.tensor(-3.0))) / (1 - torch.sigmoid(torch.tensor(3.0)))  # about 20
    assert float(g[0, 0, 0, 0] / g[0, 0, 1, 1]) > 10 * float(bce_ratio)


def _write_synthetic_data(root: Path, n=4):
    import cv2

    folder = root / "bsds_regions"
    (folder / "images").mkdir(parents=True)
    (folder / "regions").mkdir()
    for k, it in enumerate(_synthetic_items(n)):
        cv2.imwrite(str(folder / "images" / f"{k:03d}.jpg"), it["image"][..., ::-1])
        cv2.imwrite(str(folder / "regions" / f"{k:03d}.png"), it["labels"].astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted 3-step run and one stopped after 2 steps then resumed to 3, same seed and cache."""
    from napari_hitl.interactive import train_clicknet as tc

    tmp = tmp_path_factory.mktemp("gen2")
    data = _write_synthetic_data(tmp / "data")
    common = ["--data", str(data), "--cache", str(tmp / "cache"), "--cache-crops", "6", "--batch", "2",
              "--max-rounds", "1", "--eval-every", "0", "--threads", "1"]
    assert tc.main(common + ["--out", str(tmp / "a"), "--steps", "3"]) == 0
    assert tc.main(common + ["--out", str(tmp / "b"), "--steps", "2"]) == 0
    first = tc.load_checkpoint(tmp / "b" / "ckpt.pt")
    assert tc.main(common + ["--out", str(tmp / "b"), "--steps", "3", "--resume", str(tmp / "b" / "ckpt.pt")]) == 0
    return tmp, first


def test_resume_continues_steps_and_data_stream(runs):
    from napari_hitl.interactive import train_clicknet as tc

    tmp, first = runs
    a = tc.load_checkpoint(tmp / "a" / "ckpt.pt")
    b = tc.load_checkpoint(tmp / "b" / "ckpt.pt")
    assert first["counters"]["step"] == 2
    assert a["counters"]["step"] == b["counters"]["step"] == 3
    assert b["counters"]["samples"] == 6
    # the batch drawn right after the resume is the one the uninterrupted run drew at that step
    assert b["counters"]["last_batch"] == a["counters"]["last_batch"]
    assert first["counters"]["last_batch"] != a["counters"]["last_batch"] or first["data_rng"] != a["data_rng"]
    assert b["data_rng"] == a["data_rng"]
    meta = json.loads((tmp / "b" / "clicknet.json").read_text())
    assert meta["steps"] == 3 and "--resume" in meta["resume_command"]
    assert not any(f in json.dumps(meta["data"]) for f in tc.FORBIDDEN)


def test_batches_state_gives_same_next_batch(runs):
    from napari_hitl.interactive.clicknet_cache import CropCache
    from napari_hitl.interactive.train_clicknet import Batches

    tmp, _ = runs
    cache = CropCache(tmp / "cache")
    one = Batches(cache, 3, 2, seed=0)
    one.next()
    state = one.state()
    want = one.next()
    other = Batches(cache, 3, 2, seed=99)
    other.set_state(state)
    got = other.next()
    np.testing.assert_array_equal(got["idx"], want["idx"])
    np.testing.assert_array_equal(got["maps"], want["maps"])
    assert got["rounds"] == want["rounds"]
    assert not np.array_equal(Batches(cache, 3, 2, seed=99).next()["maps"], want["maps"])


def test_written_weights_and_checkpoints_load_without_network(runs, monkeypatch):
    from napari_hitl.interactive import train_clicknet as tc
    from napari_hitl.interactive.clicknet import ClickNetEngine
    from napari_hitl.interactive.clicknet_net import build_clicknet

    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tmp, _ = runs
    ClickNetEngine(weights=tmp / "b" / "clicknet.pt")
    shipped = REPO / "src" / "napari_hitl" / "interactive" / "weights" / "clicknet.pt"
    committed = REPO / "checkpoints" / "clicknet_gen2" / "ckpt.pt"
    for ck_path in [tmp / "b" / "ckpt.pt"] + ([committed] if committed.is_file() else []):
        ck = tc.load_checkpoint(ck_path)
        net = build_clicknet(pretrained=True)
        missing, unexpected = net.load_state_dict({k: v.float() for k, v in ck["model"].items()}, strict=False)
        assert not unexpected and all(k.startswith(("encoder._conv_stem", "encoder._bn0", "encoder._blocks."))
                                      for k in missing)
        assert ck["counters"]["step"] > 0
    if committed.is_file():
        assert committed.stat().st_size + shipped.stat().st_size < 25 * 2 ** 20


def test_validation_images_are_never_training_images(runs):
    from napari_hitl.interactive import train_clicknet as tc

    tmp, _ = runs
    train = {it["name"] for it in tc.load_training_set(tmp / "data", split="train", log=lambda *a: None)}
    val = {it["name"] for it in tc.load_training_set(tmp / "data", split="val", log=lambda *a: None)}
    assert len(val) == 1 and len(train) == 3 and not train & val


@pytest.mark.data
def test_recorded_val_split_matches_the_rule():
    from conftest import data_dir
    from napari_hitl.interactive import train_clicknet as tc

    data = data_dir("click_train").parent
    recorded = json.loads((REPO / "docs" / "bench" / "clicknet_val_split.json").read_text())
    assert set(recorded["sets"]) == set(tc.TRAIN_SETS)
    for name, names in recorded["sets"].items():
        stems = [p.stem for p in (data / name / "images").iterdir()]
        assert tc.val_split(stems, name) == names
        assert 1 <= len(names) <= math.ceil(tc.VAL_FRACTION * len(stems)) and set(names) <= set(stems)


def test_ship_rule_needs_a_clear_gain():
    from napari_hitl.interactive.train_clicknet import ship_beats

    gen1 = {"noc90": 8.63, "iou1": 0.435}
    assert ship_beats({"noc90": 8.2, "iou1": 0.44}, gen1)
    assert not ship_beats({"noc90": 8.45, "iou1": 0.451}, gen1)  # 0.18 clicks on 60 objects: noise
    assert not ship_beats({"noc90": 7.0, "iou1": 0.40}, gen1)  # fewer clicks but a worse first click


def test_learning_curve_plot(tmp_path):
    from napari_hitl.interactive.train_clicknet import plot_curve

    point = {"objects": 2, "per_set": {"bsds_regions": {"noc90": 9.0, "iou1": 0.4}}}
    curve = {"points": [{**point, "samples_total": 100, "noc90": 9.0, "iou1": 0.4},
                        {**point, "samples_total": 900, "noc90": 7.5, "iou1": 0.5}]}
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    plot_curve(tmp_path / "curve.json", tmp_path / "out" / "curve.png")
    assert (tmp_path / "out" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deep_variant_starts_as_its_init_and_trains_its_new_parts(runs, tmp_path):
    """A deep network initialised from default-variant weights answers exactly as they do (its
    stride-8 injection starts at zero); a --deep run from them resumes as deep, its weights file
    loads into the engine as the deep variant, and its new parts moved."""
    import torch

    from napari_hitl.interactive import train_clicknet as tc
    from napari_hitl.interactive.clicknet import ClickNetEngine, load_network
    from napari_hitl.interactive.clicknet_net import (DEEP_FIRST_TRAINED_BLOCK, FIRST_TRAINED_BLOCK,
                                                      build_clicknet)

    tmp, _ = runs
    init = tmp / "b" / "clicknet.pt"
    default, _ = load_network(init)
    deep = build_clicknet(first_trained_block=DEEP_FIRST_TRAINED_BLOCK)
    missing, unexpected = deep.load_state_dict(default.trainable_state(), strict=False)
    assert not unexpected and {k for k in missing if not k.startswith("encoder.")} == {"inject8.weight", "inject8.bias"}
    default.eval(), deep.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 320, 320, generator=g)
    maps = (torch.rand(2, 3, 320, 320, generator=g) > 0.99).float()
    with torch.no_grad():
        assert "f16" not in deep.encode(x)
        torch.testing.assert_close(deep.decode(deep.encode(x), maps), default.decode(default.encode(x), maps))

    common = ["--data", str(tmp / "data"), "--cache", str(tmp / "cache"), "--cache-crops", "6", "--batch", "2",
              "--max-rounds", "1", "--eval-every", "0", "--threads", "1", "--out", str(tmp_path / "d")]
    assert tc.main(common + ["--steps", "1", "--deep", "--init", str(init), "--old-lr-scale", "0.25"]) == 0
    assert tc.main(common + ["--steps", "2", "--resume", str(tmp_path / "d" / "ckpt.pt")]) == 0  # no --deep: kept
    meta = json.loads((tmp_path / "d" / "clicknet.json").read_text())
    assert meta["first_trained_block"] == DEEP_FIRST_TRAINED_BLOCK and meta["steps"] == 2
    eng = ClickNetEngine(weights=tmp_path / "d" / "clicknet.pt")
    assert eng.net.first_trained_block == DEEP_FIRST_TRAINED_BLOCK
    trained, _ = load_network(tmp_path / "d" / "clicknet.pt")
    state = trained.trainable_state()
    assert state["inject8.weight"].abs().sum() > 0  # the new injection left zero
    blk = f"encoder._blocks.{DEEP_FIRST_TRAINED_BLOCK}._project_conv.weight"
    assert not torch.equal(state[blk], build_clicknet().state_dict()[blk])  # the stride-16 stage trained
    assert f"encoder._blocks.{FIRST_TRAINED_BLOCK - 1}._project_conv.weight" not in default.trainable_state()


def test_param_groups_scale_the_old_parts_of_a_deep_network():
    from napari_hitl.interactive.clicknet_net import DEEP_FIRST_TRAINED_BLOCK, build_clicknet
    from napari_hitl.interactive.train_clicknet import param_groups

    default = param_groups(build_clicknet(pretrained=False), 1.0, old_scale=0.25)
    assert [g["lr"] for g in default] == [0.3, 1.0]  # the default variant ignores old_scale
    net = build_clicknet(pretrained=False, first_trained_block=DEEP_FIRST_TRAINED_BLOCK)
    groups = param_groups(net, 1.0, old_scale=0.25)
    assert [g["lr"] for g in groups] == pytest.approx([0.075, 0.3, 0.25, 1.0])
    named = {id(p): n for n, p in net.named_parameters()}
    assert {named[id(p)] for p in groups[3]["params"]} == {"inject8.weight", "inject8.bias"}
    assert all(named[id(p)].startswith("encoder._blocks.1") for p in groups[0]["params"])  # blocks 11-15
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())
