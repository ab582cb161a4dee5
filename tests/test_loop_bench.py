"""``bench loop --merge``: runs of several seeds averaged round by round, and wins counted per seed."""

from __future__ import annotations

import json

import pytest

from napari_hitl import cli
from napari_hitl.errors import InputError
from napari_hitl.evaluate.bench_loop import merge, seed_table, summarise

ARGS = {"rounds": 2, "budget": 1, "sp_per_image": 20, "n_segments": 150, "image_answer": "superpixels",
        "purity": 0.0, "steps": 10, "batch": 4, "crop": 64, "scale": 0.5, "pool": 10, "heldout": 5,
        "corrections": "graph", "no_pseudo": False, "diversity": False}


def _run(clicks, model, label=0.5):
    return {"rounds": [{"round": j, "clicks": c, "metrics": {"label_miou": label, "model_miou": m}}
                       for j, (c, m) in enumerate(zip(clicks, model))]}


def _result(seed, strategies, full=None, **args):
    out = {"dataset": "toy", "args": {**ARGS, **args, "seed": seed}, "strategies": strategies}
    if full is not None:
        out["full"] = {"clicks": 1000, "label_miou": 1.0, "model_miou": full}
    return out


def test_merge_averages_seeds_and_counts_wins():
    runs = [
        _result(0, {"random": _run([100, 200], [0.2, 0.3]), "margin": _run([100, 200], [0.3, 0.4])}, full=0.40),
        _result(1, {"random": _run([120, 220], [0.3, 0.4])}, full=0.50),
        _result(1, {"margin": _run([120, 220], [0.2, 0.5])}),  # one strategy per file
    ]
    m = merge(runs)
    assert m["seeds"] == [0, 1] and m["full"]["model_miou"] == pytest.approx(0.45)
    margin = m["strategies"]["margin"]["rounds"]
    assert [r["clicks"] for r in margin] == [110, 210]
    assert margin[0]["metrics"]["model_miou"] == pytest.approx(0.25)
    assert margin[1]["metrics"]["model_miou"] == pytest.approx(0.45)
    assert margin[1]["model_miou_sd"] == pytest.approx(0.05)
    wins = {row["seed"]: row for row in m["seed_wins"]["margin"]}
    assert wins[0]["vs_random"] == pytest.approx([0.1, 0.1])
    assert wins[1]["vs_random"] == pytest.approx([-0.1, 0.1])
    assert wins[0]["best_within_15pct"] == pytest.approx(0.3)  # 15% of 1000 clicks: round 0 only
    table = seed_table(m)
    assert "seed 0: 2/2 above random, 75.0% of full" in table and "seed 1: 1/2 above random" in table
    assert "full supervision" in summarise(m)


def test_merge_keeps_diversity_runs_apart_and_marks_partial_strategies():
    m = merge([_result(0, {"random": _run([1, 2], [0.1, 0.2])}),
               _result(0, {"margin": _run([1, 2], [0.2, 0.3])}, diversity=True),
               _result(1, {"random": _run([1, 2], [0.1, 0.2])})])
    assert set(m["strategies"]) == {"random", "margin+diversity (seed 0)"}
    assert m["strategies"]["margin+diversity (seed 0)"]["seeds"] == [0]
    assert "(random ran other seeds)" in summarise(m)  # means over other seeds do not compare
    # cost-aware runs are another strategy too, and their random runs stay the one random
    m = merge([_result(0, {"random": _run([1, 2], [0.1, 0.2])}, cost_aware=True),
               _result(0, {"margin": _run([1, 2], [0.2, 0.3])}, cost_aware=True, diversity=True),
               _result(0, {"margin": _run([1, 2], [0.2, 0.3])})])
    assert set(m["strategies"]) == {"random", "margin/click+diversity", "margin"}


def test_merge_takes_only_the_full_reference_from_runs_with_other_answers():
    m = merge([_result(0, {"margin": _run([1, 2], [0.2, 0.3])}),
               _result(0, {"random": _run([1, 2], [0.1, 0.2])}, full=0.4, image_answer="polygons")])
    assert set(m["strategies"]) == {"margin"} and m["full"]["model_miou"] == pytest.approx(0.4)
    assert "image_answer" in m["notes"][0]
    # a reference trained as long in other rounds (4 x 5 = 2 x 10 steps) is the same reference
    m = merge([_result(0, {"margin": _run([1], [0.2])}), _result(0, {}, full=0.5, rounds=4, steps=5)])
    assert m["full"]["model_miou"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="steps"):
        merge([_result(0, {"margin": _run([1], [0.2])}), _result(0, {}, full=0.4, steps=99)])


def test_merge_refuses_runs_that_do_not_compare():
    with pytest.raises(InputError, match="steps"):
        merge([_result(0, {"random": _run([1], [0.1])}), _result(1, {"random": _run([1], [0.1])}, steps=20)])
    with pytest.raises(InputError, match="two runs of random"):
        merge([_result(0, {"random": _run([1], [0.1])}), _result(0, {"random": _run([1], [0.2])})])
    with pytest.raises(InputError, match="nothing"):
        merge([])


def test_cli_merge_writes_means_and_reports_bad_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result(0, {"random": _run([1, 2], [0.1, 0.2])}, full=0.3)))
    b.write_text(json.dumps(_result(1, {"random": _run([3, 4], [0.3, 0.4])}, full=0.5)))
    out = tmp_path / "m.json"
    assert cli.main(["bench", "loop", "--merge", str(a), str(b), "--json", str(out)]) == 0
    assert "means over seeds 0, 1" in capsys.readouterr().out
    assert json.loads(out.read_text())["strategies"]["random"]["rounds"][1]["clicks"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["bench", "loop", "--merge", str(a), str(bad)]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert cli.main(["bench", "loop"]) == 1
    assert "--data is needed" in capsys.readouterr().err
