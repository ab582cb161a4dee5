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
