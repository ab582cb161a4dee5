"""The video benchmark's data discovery, loading and scores (the full run is a benchmark, not a test)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import data_dir
from napari_hitl.errors import InputError
from napari_hitl.evaluate import bench_video as bv


def test_finds_and_loads_davis_and_ctc():
    videos = bv.find_videos(data_dir("davis2016"))
    assert [v[0] for v in videos][:2] == ["blackswan", "breakdance"] and all(v[2] == "davis" for v in videos)
    frames, truth = bv.load_video(videos[0][1], "davis", limit=2)
    assert frames.shape == (2, 480, 854, 3) and frames.dtype == np.uint8
    assert truth.shape == (2, 480, 854) and set(np.unique(truth)) == {0, 1}
    (name, folder, layout), = bv.find_videos(data_dir("ctc_sim"))
    assert (name, layout) == ("01", "ctc")
    frames, truth = bv.load_video(folder, layout, limit=2)
    assert frames.dtype == np.uint8 and frames.ndim == 3 and truth.shape == frames.shape
    assert frames.max() > 200 and 0 < truth.mean() < 0.5


def test_scores_and_options(tmp_path):
    from napari_hitl.video.flow import FlowCache

    truth = np.zeros((3, 32, 48), np.int16)
    truth[:, 8:20, 10:30] = 1
    frames = (np.random.default_rng(0).random((3, 32, 48)) * 255).astype(np.uint8)
    flows = FlowCache(frames, tmp_path)
    perfect = bv.score(truth, truth, flows)
    assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0 and perfect["boundary_iou"] == 1.0
    worse = bv.score(np.zeros_like(truth), truth, flows)
    assert worse["miou"] < 0.5 and worse["boundary_iou"] == 0.0
    with pytest.raises(InputError, match="unknown method"):
        bv._methods(argparse.Namespace(methods="finetune,magic"))
    assert bv._methods(argparse.Namespace(methods="propagation")) == ["propagation", "finetune+temporal"]
    with pytest.raises(InputError, match="does not exist"):
        bv.find_videos(tmp_path / "nope")


def test_timing_round_plays_the_sequence_forward_and_back(tmp_path, capsys):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    frames = (rng.random((4, 64, 96, 3)) * 255).astype(np.uint8)
    truth = np.zeros((4, 64, 96), np.int16)
    truth[:, 16:40, 20:60] = 1
    args = argparse.Namespace(unit="rect32", scale=1.0, flow="dis", steps=2, lam=None, seed=0, budget=20.0)
    out = bv.run_timing("toy", frames, truth, args, tmp_path, n=9)
    assert out["frames"] == 9 and out["size"] == [64, 96] and out["steps"] == 2
    stages = ("flows", "first_predict", "pick", "fine_tune", "predict")
    assert all(out[k] >= 0 for k in stages)
    assert out["round"] == pytest.approx(out["pick"] + out["fine_tune"] + out["predict"])
    assert "one round on 9 frames 96x64" in capsys.readouterr().out


def test_scores_hold_davis_j_and_f(tmp_path):
    from napari_hitl.video.flow import FlowCache

    truth = np.zeros((2, 40, 60), np.int16)
    truth[:, 10:20, 10:20] = 1
    flows = FlowCache((np.random.default_rng(0).random((2, 40, 60)) * 255).astype(np.uint8), tmp_path)
    assert {bv.score(truth, truth, flows)[k] for k in ("J", "F", "J&F")} == {1.0}
    shifted = np.roll(truth, 5, axis=2)
    s = bv.score(shifted, truth, flows)
    # the object's IoU is 1/3; mIoU pools the background in and flatters the same prediction
    assert s["J"] == pytest.approx(1 / 3) and s["miou"] > 0.6 and s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)


def test_summary_names_the_worst_video_and_tables_list_every_sequence():
    def video(name, mious):
        rounds = [{"round": r + 1, "clicks": 10 * (r + 1), "clicks_pct": 1.0 * (r + 1), "round_seconds": 1.0,
                   "methods": {m: {"miou": v, "J": v - 0.1, "F": v - 0.2, "J&F": v - 0.15, "pixel_acc": 1.0,
                                   "boundary_iou": 1.0, "temporal": 1.0, "lam": 5.0} for m in bv.METHODS}}
                  for r, v in enumerate(mious)]
        return {"name": name, "full_cost": 1000, "rounds": rounds}

    videos = [video("a", [0.8, 0.9]), video("b", [0.6]), video("c", [0.7, 0.95])]
    summary = bv.summarise(videos, 2)
    assert summary[0]["methods"]["finetune"]["worst_miou"] == ["b", 0.6]
    assert summary[1]["methods"]["finetune"]["worst_J"] == ["a", pytest.approx(0.8)]  # b has no round 2
    assert summary[0]["methods"]["finetune"]["miou"] == pytest.approx(0.7)
    text = bv.per_sequence_table(videos)
    assert len(text.splitlines()) == 1 + 5 * len(bv.METHODS) and "b " in text
