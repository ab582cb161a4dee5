"""Cross-validation of the video temporal-term settings: folds, the choice, and that the shared-fit
grid reproduces bench video's run of each setting exactly."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.evaluate import bench_video as bv
from napari_hitl.evaluate import bench_video_cv as cv


def test_folds_are_fixed_by_the_names_alone():
    names = ["kite-surf", "dog", "blackswan", "car-roundabout", "camel", "breakdance"]
    a, b = cv.folds(names)
    assert a == ["blackswan", "camel", "dog"] and b == ["breakdance", "car-roundabout", "kite-surf"]


def test_grid_parsing():
    g = cv.parse_grid("100:0.2:0.4, 50:0.3:0.6")
    assert [s.key for s in g] == ["100:0.2:0.4", "50:0.3:0.6"]
    assert g[0].weight(0.3) == pytest.approx(50.0) and g[1].weight(0.7) == 50.0 and g[1].weight(0.3) == 0.0
    (p,) = cv.parse_grid("100:0.2:0.4:0.6:0.8")
    assert p.key == "100:0.2:0.4:0.6:0.8" and p.weight(0.3, 0.7) == pytest.approx(25.0)
    assert p.weight(0.1) == 0.0  # no weight from the flow's confidence: the agreement is not needed
    with pytest.raises(InputError):
        p.weight(0.5)
    for bad in ("100:0.4:0.2", "100:0.2", "", "100:0.2:0.4,100:0.2:0.4", "100:0.2:0.4:0.8", "100:0.2:0.4:0.8:0.6"):
        with pytest.raises(InputError):
            cv.parse_grid(bad)


def _rec(name, rows):
    """A sequence's grid record from {setting: [(ft mIoU, f+t mIoU) per round]}."""
    def row(r, ft, tt):
        m = {"miou": 0.0, "J": 0.0, "F": 0.0, "J&F": 0.0, "pixel_acc": 0.0, "boundary_iou": 0.0, "temporal": 0.0}
        return {"round": r, "clicks": r, "clicks_pct": float(r), "round_seconds": 1.0,
                "methods": {"propagation": dict(m), "finetune": dict(m, miou=ft), "finetune+temporal": dict(m, miou=tt, lam=100.0, evidence={"trust": 0.5})}}
    return {"name": name, "frames": 3, "full_cost": 100,
            "settings": {k: [row(i + 1, ft, tt) for i, (ft, tt) in enumerate(v)] for k, v in rows.items()}}


def test_choice_respects_the_never_below_fine_tune_constraint():
    grid = cv.parse_grid("100:0.2:0.4,200:0.2:0.4")
    # 200 has the better mean but falls 0.05 below fine-tuning in one round: 100 is chosen
    recs = [_rec("a", {"100:0.2:0.4": [(0.5, 0.6), (0.6, 0.7)], "200:0.2:0.4": [(0.5, 0.9), (0.6, 0.55)]}),
            _rec("b", {"100:0.2:0.4": [(0.5, 0.6), (0.6, 0.7)], "200:0.2:0.4": [(0.5, 0.9), (0.6, 0.9)]})]
    scores = cv.tuning_scores(recs, grid, 0.01)
    assert [s["qualifies"] for s in scores] == [True, False]
    assert scores[1]["worst_gain"] == pytest.approx(-0.05)
    assert cv.choose(scores) == "100:0.2:0.4"
    # within the margin it qualifies, and its better mean wins
    assert cv.choose(cv.tuning_scores(recs, grid, 0.06)) == "200:0.2:0.4"
    # nothing qualifies: the least shortfall
    assert cv.choose([{"setting": "x", "mean_miou": 0.9, "worst_gain": -0.2, "qualifies": False},
                      {"setting": "y", "mean_miou": 0.5, "worst_gain": -0.1, "qualifies": False}]) == "y"
    # ties go to the earlier point
    assert cv.choose([{"setting": "x", "mean_miou": 0.5, "worst_gain": 0, "qualifies": True},
                      {"setting": "y", "mean_miou": 0.5, "worst_gain": 0, "qualifies": True}]) == "x"


def test_cross_validation_reports_each_fold_under_the_other_folds_choice():
    grid = cv.parse_grid("100:0.2:0.4,200:0.2:0.4")
    good, bad = [(0.5, 0.6)], [(0.5, 0.3)]
    # fold A (a1, a3) favours 200, fold B (a2, a4) favours 100
    recs = [_rec("a1", {"100:0.2:0.4": good, "200:0.2:0.4": [(0.5, 0.7)]}),
            _rec("a2", {"100:0.2:0.4": good, "200:0.2:0.4": bad}),
            _rec("a3", {"100:0.2:0.4": good, "200:0.2:0.4": [(0.5, 0.7)]}),
            _rec("a4", {"100:0.2:0.4": good, "200:0.2:0.4": bad})]
    out = cv.cross_validate(recs, grid, 0.01, rounds=1)
    assert [r["chosen"] for r in out["runs"]] == ["200:0.2:0.4", "100:0.2:0.4"]
    held = {v["name"]: (v["setting"], v["rounds"][0]["methods"]["finetune+temporal"]["miou"]) for v in out["held_out"]}
    # B reported under A's choice (200, where B is bad), A under B's (100)
    assert held == {"a2": ("200:0.2:0.4", 0.3), "a4": ("200:0.2:0.4", 0.3),
                    "a1": ("100:0.2:0.4", 0.6), "a3": ("100:0.2:0.4", 0.6)}
    assert out["default"] == "100:0.2:0.4" and "disagree" in out["default_reason"]
    assert out["held_out_summary"][0]["methods"]["finetune+temporal"]["worst_miou"][1] == pytest.approx(0.3)
    md = cv.markdown(out, recs, {"unit": "rect40", "rounds": 1, "budget": 1.0, "limit_frames": 3, "scale": 1.0,
                                 "steps": 2, "seed": 0, "grid": [s.key for s in grid]})
    assert "| a2 | 200:0.2:0.4 | 1 |" in md
    # the held-out shortfall against fine-tune alone: a2 and a4 are 0.2 below it
    assert "| a2 | 1 | 200:0.2:0.4 | -0.200 |" in md and "Worst: -0.200 (a2, round 1)" in md and "NOT met" in md


def test_grid_run_repeats_bench_video_for_every_setting(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n, h, w = 4, 64, 96
    frames = (rng.random((n, h, w, 3)) * 60).astype(np.uint8)
    truth = np.zeros((n, h, w), np.int16)
    for t in range(n):  # a bright textured square moving right
        x = 20 + 4 * t
        frames[t, 16:44, x:x + 30] = 150 + (rng.random((28, 30, 3)) * 100).astype(np.uint8)
        truth[t, 16:44, x:x + 30] = 1
    # the two settings give different weights for this video's trust, so the tree branches
    # and the probing point's weight is the agreement itself (factor 0 at 0, 1 at 1)
    grid = cv.parse_grid("100:0.0:0.05,100:0.9:0.95,100:0.0:0.05:0:1")
    common = dict(unit="rect32", rounds=2, budget=6.0, scale=1.0, steps=3, seed=0, flow="dis",
                  motion_trust_min=None, methods=",".join(bv.METHODS), fixed_lam=False)
    rec = cv.run_grid("toy", frames, truth, grid, argparse.Namespace(**common), tmp_path / "grid")
    assert rec["fits"] >= 5  # ft + two temporal fits in round one, then per branch
    lams = [rec["settings"][s.key][0]["methods"]["finetune+temporal"]["lam"] for s in grid]
    assert lams[0] == 100.0 and lams[1] == 0.0 and 0 < lams[2] < 100.0
    ev = rec["settings"][grid[2].key][0]["methods"]["finetune+temporal"]["evidence"]
    assert lams[2] == pytest.approx(100.0 * ev["label_agreement"])
    for s in grid:
        args = argparse.Namespace(**common, lam=s.lam, trust_low=s.low, trust_high=s.high,
                                  agree_low=s.agree_low, agree_high=s.agree_high)
        ref = bv.run_video("toy", frames, truth, args, tmp_path / f"ref{s.key}", lambda *a, **k: None)
        for got, want in zip(rec["settings"][s.key], ref["rounds"]):
            assert got["clicks"] == want["clicks"]
            for m in bv.METHODS:
                for k in ("miou", "J", "F"):
                    assert got["methods"][m][k] == pytest.approx(want["methods"][m][k], abs=1e-6), (s.key, m, k)
            assert got["methods"]["finetune+temporal"]["lam"] == want["methods"]["finetune+temporal"]["lam"]
    # fine-tune alone's figures taken from that run: the temporal fits come out the same
    from napari_hitl.io import atomic_write_json

    path = tmp_path / "grid.json"
    run_settings = {"unit": "rect32", "rounds": 2, "budget": 6.0, "limit_frames": 0, "scale": 1.0, "steps": 3,
                    "seed": 0, "flow": "dis"}
    atomic_write_json(path, {**run_settings, "videos": [rec]})
    rows = cv.finetune_rows(path, dict(run_settings, rounds=1))
    once = argparse.Namespace(**dict(common, rounds=1))
    again = cv.run_grid("toy", frames, truth, grid, once, tmp_path / "again", finetune=rows["toy"])
    # no fine-tune fit: one temporal fit per distinct weight of round one
    assert again["fits"] == len({rec["settings"][s.key][0]["methods"]["finetune+temporal"]["lam"] for s in grid})
    for s in grid:
        got, want = again["settings"][s.key][0]["methods"], rec["settings"][s.key][0]["methods"]
        assert got["finetune"]["reused"] and got["finetune"]["miou"] == want["finetune"]["miou"]
        assert got["finetune+temporal"]["miou"] == pytest.approx(want["finetune+temporal"]["miou"], abs=1e-6)
    with pytest.raises(InputError, match="steps"):
        cv.finetune_rows(path, dict(run_settings, steps=4))
    rows["toy"][0]["clicks"] += 1
    with pytest.raises(InputError, match="other labels"):
        cv.run_grid("toy", frames, truth, grid, once, tmp_path / "again2", finetune=rows["toy"])


def test_combine_reads_the_runs_settings_and_writes_the_tables(tmp_path):
    from napari_hitl.io import atomic_write_json, read_json

    good, worse = [(0.5, 0.6)], [(0.5, 0.55)]
    meta = {"unit": "rect40", "rounds": 1, "budget": 2.4, "limit_frames": 30, "scale": 0.5, "steps": 120,
            "seed": 0, "flow": "dis", "motion_trust_min": None, "data": "x", "threads": 1}
    parts = [[_rec(n, {"100:0.2:0.4": good, "100:0.3:0.6": worse}) for n in ("a1", "a3")],
             [_rec(n, {"100:0.2:0.4": worse, "100:0.3:0.6": good}) for n in ("a2", "a4")]]
    paths = []
    for k, videos in enumerate(parts):
        paths.append(tmp_path / f"part{k}.json")
        atomic_write_json(paths[-1], {**meta, "videos": videos})
    args = argparse.Namespace(grid=cv.DEFAULT_GRID, combine=[str(p) for p in paths], json=str(tmp_path / "cv.json"),
                              md=str(tmp_path / "cv.md"), plot=None, note="under load", margin=0.01,
                              # the command line's run settings are not the runs': these must be ignored
                              unit="rect8", rounds=5, budget=9.0, limit_frames=0, scale=1.0, steps=1, seed=3,
                              flow="dis", threads=1, motion_trust_min=None)
    assert cv.run(args) == 0
    out = read_json(tmp_path / "cv.json")
    assert out["rounds"] == 1 and out["steps"] == 120 and out["note"] == "under load"
    assert [r["chosen"] for r in out["cv"]["runs"]] == ["100:0.2:0.4", "100:0.3:0.6"]
    md = (tmp_path / "cv.md").read_text()
    assert "under load" in md and "| a2 | 100:0.2:0.4 | 1 |" in md and "120 steps" in md
    # a part run with other settings is refused
    atomic_write_json(paths[1], {**meta, "steps": 60, "videos": parts[1]})
    with pytest.raises(InputError, match="other settings"):
        cv.run(args)
