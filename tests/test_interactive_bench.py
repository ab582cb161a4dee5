"""The interactive benchmark end to end on a tiny generated dataset (click and full-image modes)."""

import json

import numpy as np
import pytest
from PIL import Image

from napari_hitl.cli import main


def _dataset(root, n=2):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:64, :80]
    for i in range(n):
        m = ((yy - 32) ** 2 + (xx - 30 - 10 * i) ** 2 <= 15 ** 2)
        img = np.where(m[..., None], [220, 40, 40], [40, 40, 200]) + rng.normal(0, 8, (64, 80, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        mask = (m * 255).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def test_bench_click_mode(tmp_path, capsys):
    data = _dataset(tmp_path / "toy")
    out = tmp_path / "r.json"
    assert main(["bench", "interactive", "--data", str(data), "--engine", "graph", "--json", str(out)]) == 0
    res = json.loads(out.read_text())[0]
    assert res["images"] == 2 and 1 <= res["noc90"] <= 3 and res["iou@5"] > 0.9
    assert "NoC@90" in capsys.readouterr().out


def test_bench_instances_mode_scores_every_object(tmp_path):
    """--instances: each object of an id map is its own click target; tiny ones are left out."""
    root = tmp_path / "nuclei"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[:64, :96]
    lab = np.zeros((64, 96), np.uint16)
    lab[(yy - 30) ** 2 + (xx - 25) ** 2 <= 12 ** 2] = 1
    lab[(yy - 30) ** 2 + (xx - 70) ** 2 <= 12 ** 2] = 7
    lab[2:4, 2:4] = 9  # 4 pixels: under --min-object
    img = np.where(lab[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(img).save(root / "images" / "a.png")
    Image.fromarray(lab).save(root / "labels" / "a.png")
    out = tmp_path / "r.json"
    assert main(["bench", "interactive", "--data", str(root), "--instances", "--engine", "graph",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())[0]
    assert res["images"] == 2 and res["photos"] == 1
    assert sorted(r["image"] for r in res["per_image"]) == ["a#1", "a#7"]
    assert res["iou@5"] > 0.85 and 0.0 <= res["never_reach_90"] <= 1.0
    # --resize is not applied to id maps: refused, not reported as "@32x32" figures of full-size images
    assert main(["bench", "interactive", "--data", str(root), "--instances", "--engine", "graph",
                 "--resize", "32", "--json", str(tmp_path / "r2.json")]) != 0
    assert not (tmp_path / "r2.json").exists()
    from napari_hitl.errors import InputError
    from napari_hitl.evaluate.bench_interactive import bench_clicks, instance_targets

    with pytest.raises(InputError, match="resize"):  # the ablation script calls this directly
        bench_clicks("graph", root, None, 5, resize=32, targets=instance_targets(root, None))
    # a folder without labels/ is refused with a clear message
    (tmp_path / "bad" / "images").mkdir(parents=True)
    assert main(["bench", "interactive", "--data", str(tmp_path / "bad"), "--instances"]) != 0


def test_bench_full_image_mode(tmp_path):
    root = tmp_path / "multi"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cls = np.zeros((48, 64), np.uint8)
    cls[:, 20:40], cls[:, 40:] = 1, 3
    cls[0:4, 0:4] = 11
    img = np.array([[200, 30, 30], [30, 200, 30], [0, 0, 0], [30, 30, 200]], np.uint8)[np.minimum(cls, 3)]
    Image.fromarray(img).save(root / "images" / "a.png")
    Image.fromarray(cls).save(root / "masks" / "a.png")
    out = tmp_path / "f.json"
    assert main(["bench", "interactive", "--full-image", "--data", str(root), "--json", str(out)]) == 0
    res = json.loads(out.read_text())[0]
    assert res["regions"] == 3 and res["mean_region_iou"]["2"] > 0.8


def test_click_timing_reports_medians_on_a_small_image():
    from napari_hitl.evaluate.timing import time_clicks

    out = time_clicks(size=128, clicks=2, repeats=1)
    assert out["size"] == 128 and out["clicks"] == 2 and 0 < out["click_ms_median"] <= out["click_ms_p95"] * 1.0001
    assert out["prepare_ms_median"] > 0 and 0.0 <= out["final_iou"] <= 1.0
