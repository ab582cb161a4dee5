"""The npe2 manifest is found (editable and wheel); readers, writers and samples work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hitl import io
from napari_hitl.errors import HitlError
from napari_hitl.project import Project

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HITL_HOME", str(tmp_path / "home"))


def test_manifest_discovered_and_valid():
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-hitl")
    assert manifest.contributions == PluginManifest.from_file(REPO / "napari.yaml").contributions
    contributions = manifest.contributions
    assert {w.filename_extensions[0] for w in contributions.writers} == {".tif", ".png", ".zarr"}
    assert {s.key for s in contributions.sample_data} == {"nuclei", "timelapse"}
    assert [w.display_name for w in contributions.widgets] == ["Annotation dock"]
    for command in contributions.commands:  # every python_name resolves
        module, attr = command.python_name.split(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr), command.python_name
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-hitl"], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def _clean_checkout(dest: Path) -> Path:
    """Copy what a clean clone would hold (tracked + unignored files), keeping symlinks."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            shutil.copy2(src, dst)
    return dest


@pytest.mark.slow
def test_wheel_contains_manifest_and_samples_and_is_discovered(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    src = _clean_checkout(tmp_path / "checkout")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("napari_hitl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert names.count("napari_hitl/napari.yaml") == 1
        assert zf.read("napari_hitl/napari.yaml") == (REPO / "napari.yaml").read_bytes()
        assert "napari_hitl/sample_data/nuclei/images/fluo_dense.png" in names
        assert "napari_hitl/sample_data/timelapse/drift.tif" in names
        assert "napari_hitl/interactive/weights/clicknet.pt" in names  # the learned engine's weights
        assert "napari_hitl/interactive/weights/clicknet.json" in names
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "napari.manifest" in entry_points and "napari_hitl:napari.yaml" in entry_points
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import napari_hitl, npe2; from napari_hitl.samples import sample_root; "
            "m = npe2.PluginManifest.from_distribution('napari-hitl'); "
            "assert m.contributions.sample_data and m.contributions.widgets; "
            "print(napari_hitl.__file__); print(sample_root())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out), out


def test_reader_on_project_and_image_folder(tmp_path):
    from napari_hitl.napari._reader import get_reader

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((12, 14, 3), 40 * i, np.uint8)).save(imgs / f"p{i}.png")
    layers = get_reader(str(imgs))(str(imgs))
    assert [kw["name"] for _, kw, _ in layers] == ["p0", "p1"] and layers[0][1]["rgb"]
    with Project.create(tmp_path / "proj", imgs) as p:
        p.commit_labels("p0", np.ones((12, 14), np.uint8))
    layers = get_reader(str(tmp_path / "proj"))(str(tmp_path / "proj"))
    (img, img_kw, t1), (lab, lab_kw, t2) = layers
    assert (t1, t2) == ("image", "labels") and img.shape == (12, 14, 3) and lab.all()
    assert lab_kw["metadata"]["hitl_project"] == str((tmp_path / "proj").resolve())
    assert get_reader(str(imgs / "p0.png")) is None
    assert get_reader(str(tmp_path / "nothing-here")) is None


@pytest.mark.parametrize("ext", [".tif", ".png", ".zarr"])
def test_writers_through_napari(viewer_factory, tmp_path, ext):
    import napari

    labels = np.zeros((20, 24), np.uint16)
    labels[4:9, 5:12] = 2
    viewer = viewer_factory()
    layer = viewer.add_labels(labels, name="lab")
    written = napari.save_layers(str(tmp_path / f"out{ext}"), [layer], plugin="napari-hitl")
    assert written
    np.testing.assert_array_equal(io.read_labels(written[0]), labels)


def test_samples_open_a_project_and_dock(viewer_factory, tmp_path):
    from napari_hitl.napari._widget import HitlWidget, find_dock

    viewer = viewer_factory()
    viewer.open_sample("napari-hitl", "nuclei")
    names = [layer.name for layer in viewer.layers]
    assert "fluo_dense" in names[0] and any("labels" in n for n in names)
    dock = find_dock(viewer)
    assert isinstance(dock, HitlWidget) and dock.project is not None
    assert dock.project.root == (tmp_path / "home" / "samples" / "nuclei-project").resolve()
    assert dock.image_list.count() == 4
    viewer.open_sample("napari-hitl", "timelapse")
    assert dock.project.images[0].frames == 12


def test_demo_docks_under_the_title_of_the_plugins_menu(viewer_factory):
    """`napari-hitl demo` names its dock as napari's Plugins menu does, and the README says so."""
    from napari._app_model import get_app_model

    from napari_hitl.napari.app import dock_title

    viewer_factory()  # the menus exist once a viewer does
    titles = [item.command.title for item in get_app_model().menus.get_menu("napari/plugins")
              if getattr(item, "command", None) is not None and item.command.id == "napari-hitl.make_dock"]
    assert titles == [dock_title()] == ["Annotation dock (Human-in-the-loop segmentation)"]
    readme = (REPO / "README.md").read_text()
    assert f"*Plugins > {dock_title()}*" in readme and "DESIGN.md" not in readme


def test_napari_project_opens_the_dock_without_asking(viewer_factory, tmp_path, capsys):
    """`napari PROJECT`: once the project was created (or opened in the dock), napari opens it
    with the dock, every image listed, and no reader dialog."""
    from napari.errors import MultipleReaderError

    from napari_hitl.cli import main
    from napari_hitl.napari._widget import HitlWidget, find_dock

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 14), 40 * i, np.uint8)).save(imgs / f"p{i}.png")
    Project.create(tmp_path / "plain", imgs).close()
    viewer = viewer_factory()
    with pytest.raises(MultipleReaderError):  # napari's folder reader claims any folder too
        viewer.open(str(tmp_path / "plain"), plugin=None)  # as `napari PATH` does
    assert main(["create", str(tmp_path / "proj"), str(imgs)]) == 0
    assert f"napari {tmp_path / 'proj'}" in capsys.readouterr().out
    viewer.open(str(tmp_path / "proj"), plugin=None)
    dock = find_dock(viewer)
    assert isinstance(dock, HitlWidget) and dock.project.root == (tmp_path / "proj").resolve()
    assert dock.image_list.count() == 3


def test_the_dock_fits_napari_default_window(viewer_factory, tmp_path, monkeypatch, qtbot):
    """At napari's default window size (1089x702) the dock does not make the window grow, and
    once it docks, the sample image lies wholly inside the canvas (the view is refit)."""
    from napari_hitl.napari._widget import find_dock

    monkeypatch.setenv("NAPARI_HITL_HOME", str(tmp_path / "home"))
    viewer = viewer_factory(show=True)
    window = viewer.window._qt_window
    window.resize(1089, 702)
    viewer.open_sample("napari-hitl", "nuclei")  # the image first, then the dock docks beside it
    dock = find_dock(viewer)
    qtbot.waitUntil(lambda: dock.isVisible(), timeout=10_000)
    qtbot.wait(300)
    assert (window.width(), window.height()) == (1089, 702)
    canvas_h, canvas_w = viewer.window._qt_viewer.canvas.size
    assert canvas_w >= 380, f"the canvas is squeezed to {canvas_w} px"
    image = viewer.layers[dock.current]
    h, w = image.data.shape[:2]
    zoom = viewer.camera.zoom
    assert h * zoom <= canvas_h + 1 and w * zoom <= canvas_w + 1, (h * zoom, w * zoom, canvas_h, canvas_w)
    assert abs(viewer.camera.center[-1] - (w - 1) / 2) < 1 and abs(viewer.camera.center[-2] - (h - 1) / 2) < 1
    assert not dock.suggestions.answers.isVisible()  # no empty suggestion box before there are suggestions


def test_a_large_image_opens_as_a_multiscale_layer(viewer_factory, tmp_path, monkeypatch):
    import tifffile

    from napari_hitl.napari._reader import get_reader

    img = np.random.default_rng(0).integers(0, 255, (700, 600, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb")
    assert get_reader(str(path)) is None  # small: napari's own TIFF reader reads it whole
    monkeypatch.setattr(io, "LAZY_PIXELS", 100 * 100)
    monkeypatch.setattr(io, "PYRAMID_MIN_SIDE", 200)
    (levels, kwargs, kind), = get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [lv.shape for lv in levels] == [(700, 600, 3), (350, 300, 3), (175, 150, 3)]
    viewer = viewer_factory()
    layer, = viewer.open(str(path), plugin="napari-hitl")
    assert layer.multiscale and len(layer.data) == 3 and layer.rgb
    np.testing.assert_array_equal(np.asarray(layer.data[0][100:110, 50:60]), img[100:110, 50:60])
    shot = viewer.screenshot(canvas_only=True)
    assert shot.std() > 0  # the image is drawn
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    with pytest.raises(HitlError):
        get_reader(str(bad))(str(bad))
