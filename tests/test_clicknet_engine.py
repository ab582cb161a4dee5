"""The learned click engine: offline weights, crop geometry, output contract, and that it
beats the graph engine on a few objects of its own training set."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from conftest import data_dir
from napari_hitl.errors import InputError
from napari_hitl.interactive import clicknet as cn
from napari_hitl.prompts import Click, ExtremePoints, RegionPrompts, Scribble


@pytest.fixture(scope="module")
def engine():
    from napari_hitl.interactive.engine import get_engine

    return get_engine("clicknet")


def test_weights_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the click engine tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    eng = cn.ClickNetEngine()
    assert cn.weights_file().stat().st_size < 25 * 2 ** 20
    meta = json.loads(cn.weights_file().with_suffix(".json").read_text())
    for key in ("command", "data", "seed", "steps", "samples", "train_seconds", "git_commit"):
        assert key in meta, key
    assert not any(b in json.dumps(meta["data"]) for b in ("grabcut", "berkeley", "davis345"))
    assert eng.device_name


def test_damaged_weights_raise_clear_error(tmp_path):
    from napari_hitl.errors import HitlError

    bad = tmp_path / "clicknet.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HitlError, match="cannot be read"):
        cn.ClickNetEngine(weights=bad)
    with pytest.raises(HitlError, match="missing"):
        cn.ClickNetEngine(weights=tmp_path / "absent.pt")


@pytest.mark.parametrize("crop", [(50.0, 100.0, 260.0), None, (80.0, 120.0, 90.0)])
def test_crop_and_paste_back_are_inverse(crop):
    mask = np.zeros((300, 500), np.float32)
    mask[100:200, 150:320] = 1
    crop = cn.full_crop(mask.shape) if crop is None else crop
    small = cn.warp_to_crop(mask, crop)
    back = cn.paste_logits(small * 2 - 1, crop, mask.shape) > 0
    y0, x0, side = crop
    inside = np.zeros(mask.shape, bool)
    inside[max(int(y0), 0):int(y0 + side), max(int(x0), 0):int(x0 + side)] = True
    # inside the crop the mask comes back (up to resampling at its border), outside it is negative
    assert (back ^ (mask > 0))[inside].mean() < 0.01
    assert not back[~inside].any()
    pts = cn.to_crop(np.array([[y0 - 0.5, x0 - 0.5], [y0 + side - 0.5, x0 + side - 0.5]]), crop)
    np.testing.assert_allclose(pts, [[-0.5, -0.5], [cn.CROP_SIZE - 0.5, cn.CROP_SIZE - 0.5]])


def _disk_image(h=240, w=320, cy=120, cx=170, r=50, gray=False):
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    rng = np.random.default_rng(0)
    img = np.where(disk[..., None], [200, 60, 50], [40, 90, 160]).astype(np.float32)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if gray:
        img = (img.mean(axis=2) * 200).astype(np.uint16)
    return img, disk


@pytest.mark.parametrize("gray", [False, True])
def test_output_contract_and_positive_click(engine, gray):
    img, disk = _disk_image(gray=gray)
    engine.prepare(img)
    region = RegionPrompts(1, [Click(120, 170)])
    logits = engine.predict(region)
    assert logits.shape == disk.shape and logits.dtype == np.float32 and np.isfinite(logits).all()
    mask = engine.predict_mask(region)
    assert mask[120, 170], "a positive click must be inside the mask it produces"
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.7, iou
    # a second click with the previous mask fed back keeps working (crop zooms in)
    region.clicks.append(Click(30, 30, positive=False))
    mask2 = engine.predict_mask(region, prev_mask=mask)
    assert mask2[120, 170] and not mask2[30, 30]


def test_extreme_points_scribbles_and_others(engine):
    img, disk = _disk_image()
    engine.prepare(img)
    ext = ExtremePoints(np.array([[120, 120], [120, 220], [70, 170], [170, 170]], float))
    mask = engine.predict_mask(RegionPrompts(1, extreme=ext))
    assert (mask & disk).sum() / (mask | disk).sum() > 0.7
    scrib = RegionPrompts(1, scribbles=[Scribble(np.array([[100, 150], [140, 190]], float))])
    assert engine.predict_mask(scrib)[120, 170]
    # pixels outside the crop get a strongly negative logit
    logits = engine.predict(RegionPrompts(1, extreme=ext), others=[RegionPrompts(2, [Click(10, 300)])])
    assert logits[0, 0] == cn.OUTSIDE_LOGIT


def test_bad_input_raises_clear_errors(engine):
    fresh = cn.ClickNetEngine.__new__(cn.ClickNetEngine)
    fresh._image = None
    with pytest.raises(InputError, match="prepare"):
        fresh.predict(RegionPrompts(1, [Click(1, 1)]))
    img, _ = _disk_image()
    engine.prepare(img)
    with pytest.raises(InputError, match="outside"):
        engine.predict(RegionPrompts(1, [Click(500, 10)]))
    with pytest.raises(InputError, match="prev_mask"):
        engine.predict(RegionPrompts(1, [Click(10, 10)]), prev_mask=np.zeros((5, 5), bool))


def _robot_iou(engine, image, truth, clicks=3):
    from napari_hitl.simulate.clicker import run_clicks

    engine.prepare(image)
    return run_clicks(engine, truth, clicks).final_iou

def test_beats_graph_engine_on_held_in_sample(engine):
    """Mean IoU after 3 robot clicks on three bsds_regions objects (its own training set)."""
    import cv2

    from napari_hitl.interactive.engine import get_engine

    root = data_dir("bsds_regions")
    graph = get_engine("graph")
    scores = {"clicknet": [], "graph": []}
    for path in sorted((root / "images").iterdir())[:3]:
        image = cv2.imread(str(path))[..., ::-1].copy()
        regions = cv2.imread(str(root / "regions" / (path.stem + ".png")), cv2.IMREAD_UNCHANGED)
        areas = np.bincount(regions.ravel())
        frac = areas / regions.size
        # the largest region that is an object rather than the whole backdrop
        cand = [i for i in np.argsort(-areas) if i > 0 and 0.03 < frac[i] < 0.4]
        truth = regions == cand[0]
        scores["clicknet"].append(_robot_iou(engine, image, truth))
        scores["graph"].append(_robot_iou(graph, image, truth))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["clicknet"] > mean["graph"], mean
    assert mean["clicknet"] > 0.7, mean


def test_full_image_walker_lets_regions_compete_on_the_network_priors():
    """walker > 0: full-image mode is one joint random walk on the network's logits."""
    from napari_hitl.interactive.canvas import segment_full_image
    from napari_hitl.simulate.extreme import extreme_points

    img, disk = _disk_image()
    square = np.zeros_like(disk)
    square[40:200, 240:300] = True
    img[square] = [60, 200, 60]
    eng = cn.ClickNetEngine(walker=1.0)
    rest = ~(disk | square)  # full-image mode: every pixel inside the boxes goes to some region
    regions = [RegionPrompts(1, extreme=extreme_points(disk, 2, seed=0)),
               RegionPrompts(2, extreme=extreme_points(square, 2, seed=1)),
               RegionPrompts(3, extreme=extreme_points(rest, 2, seed=2))]
    out = segment_full_image(eng, img, regions)
    for k, truth in ((1, disk), (2, square), (3, rest)):
        got = out == k
        assert (got & truth).sum() / (got | truth).sum() > 0.85
    assert eng._graph is not None  # the walk ran
    with pytest.raises(InputError, match="walker"):
        cn.ClickNetEngine(walker=-1.0)
