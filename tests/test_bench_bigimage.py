"""The large-image benchmark: its generated slide is what it says, and a small run gives figures."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_hitl import io
from napari_hitl.evaluate import bench_bigimage as bb


def test_generated_slide_is_a_pyramid_whose_objects_match_their_masks(tmp_path):
    path = tmp_path / "s.tif"
    assert bb.write_slide(path, 1100) == 2
    cells = bb.make_cells(1100)
    with io.open_lazy(path) as img:
        assert img.own_pyramid and img.shape == (1100, 1100, 3) and img.level_shape(1) == (550, 550)
        i, j = [(int(a), int(b)) for a, b in zip(*np.nonzero(cells["present"]))][3]
        box = (i * bb.CELL, j * bb.CELL, (i + 1) * bb.CELL, (j + 1) * bb.CELL)
        pixels = img.read(*box)
        truth = bb.object_mask(cells, i, j, box)
        assert 0.02 < truth.mean() < 0.9
        assert ((pixels[..., 1] < 134) == truth).mean() > 0.97  # JPEG blurs the rim a little
        coarse = img.read(box[0] // 2, box[1] // 2, box[2] // 2, box[3] // 2, level=1)
        assert ((coarse[..., 1] < 134) == truth[::2, ::2]).mean() > 0.95


@pytest.mark.slow
def test_a_small_run_writes_its_figures(tmp_path):
    parser = argparse.ArgumentParser()
    bb.add_arguments(parser)
    args = parser.parse_args(["--side", "1500", "--objects", "2", "--clicks", "3", "--slide-dir", str(tmp_path),
                              "--skip-napari", "--predict-side", "1100", "--json", str(tmp_path / "fig.json")])
    assert bb.run(args) == 0
    fig = json.loads((tmp_path / "fig.json").read_text())
    assert fig["open"]["shape"] == [1500, 1500, 3] and fig["open"]["peak_rss_mb"] > 0
    clicks = fig["clicks"]
    assert clicks["objects"] == 2 and clicks["all_clicks"]["n"] >= 2
    assert clicks["all_clicks"]["median_ms"] > 0 and 0 <= clicks["mean_final_iou"] <= 1
    assert fig["napari"] == {"skipped": "--skip-napari"}
    commit = fig["commit_window"]
    assert commit["commits"]["n"] == 20 and commit["commits"]["median_ms"] > 0 and commit["objects_in_index"] == 20
    assert fig["predict_large"]["side"] == 1100 and fig["predict_large"]["megapixels_per_s"] > 0
