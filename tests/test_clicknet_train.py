"""The click-model training script runs end to end on the training sets and records its provenance."""

from __future__ import annotations

import json

import pytest

from conftest import data_dir


@pytest.mark.data
@pytest.mark.slow
def test_training_script_smoke(tmp_path):
    from napari_hitl.interactive import train_clicknet

    data = data_dir("bsds_regions").parent
    out = tmp_path / "run"
    rc = train_clicknet.main(["--data", str(data), "--out", str(out), "--limit", "2", "--steps", "2",
                              "--batch", "2", "--max-rounds", "1", "--threads", "1",
                              "--cache-crops", "8", "--eval-every", "0"])
    assert rc == 0
    meta = json.loads((out / "clicknet.json").read_text())
    assert meta["steps"] == 2 and meta["samples"] == 4 and meta["seed"] == 0
    assert set(meta["data"]) == set(train_clicknet.TRAIN_SETS)
    assert not any(b in json.dumps(meta["data"]) for b in train_clicknet.FORBIDDEN)
    # the weights it writes load into the engine
    from napari_hitl.interactive.clicknet import ClickNetEngine

    ClickNetEngine(weights=out / "clicknet.pt")


def test_training_sets_exclude_benchmarks():
    from napari_hitl.interactive import train_clicknet

    for name in train_clicknet.TRAIN_SETS:
        assert not any(b in name for b in train_clicknet.FORBIDDEN)
