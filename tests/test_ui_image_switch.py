"""Moving between images in the dock: the image, labels and prompt layers are refilled, not
removed and made again (a removed layer costs napari a full garbage collection on the UI
thread), and nothing of the last image leaks into the next: data, names, contrast, prompts,
napari's undo history."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hitl.project import Project

WAIT = 60_000


def _project(tmp_path) -> Project:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 60, (96, 128), dtype=np.uint8)).save(folder / "a_dim.png")
    Image.fromarray(rng.integers(150, 255, (80, 72), dtype=np.uint8)).save(folder / "b_bright.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "c_rgb.png")
    return Project.create(tmp_path / "p", folder, classes=["background", "cell"])


def test_moving_between_images_refills_the_layers(dock, qtbot, tmp_path):
    viewer = dock.viewer
    dock.annotate.engine_box.setCurrentText("graph")
    dock.open_project(_project(tmp_path))
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert dock.current == "a_dim"
    image, labels = dock.image_layer, dock.labels_layer
    dock.run_action("click")
    dock.tools.click(40.0, 60.0, True)
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    points = dock.tools.points_layer
    assert points is not None and len(points.data) == 1
    labels.paint((10, 10), 3)  # a brush stroke in napari's undo history
    assert labels.data[10, 10] == 3

    removed = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    dock.show_image("b_bright")
    assert removed == []  # nothing removed: no garbage collection on the UI thread
    assert dock.image_layer.name == image.name == "b_bright"
    assert dock.labels_layer.name == "b_bright labels"
    assert dock.labels_layer.metadata["hitl_image"] == "b_bright"
    assert dock.image_layer.data.shape == (80, 72) and dock.labels_layer.data.shape == (80, 72)
    assert not dock.labels_layer.data.any()
    assert list(dock.image_layer.contrast_limits) == [0, 255]
    assert len(dock.tools.points_layer.data) == 0 and dock.tools.points_layer.name == "b_bright prompts"
    dock.labels_layer.undo()  # the brush stroke belonged to a_dim: nothing to undo here
    assert not dock.labels_layer.data.any()
    assert dock.tools.layer is dock.labels_layer

    # the prompt layers stay above the labels and take the next prompt
    dock.tools.click(30.0, 30.0, True)
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    names = [lay.name for lay in viewer.layers]
    assert names.index("b_bright prompts") > names.index("b_bright labels")
    assert len(dock.tools.points_layer.data) == 1 and dock.labels_layer.data.any()

    # an RGB image cannot go into a grey image's layer: new layers, the old ones removed at once
    dock.show_image("c_rgb")
    assert dock.image_layer.rgb and dock.image_layer.data.shape == (64, 64, 3)
    assert {"b_bright", "b_bright labels", "b_bright prompts", "b_bright scribbles"} <= set(removed)
    names = [lay.name for lay in viewer.layers]
    assert not any(n.startswith("b_bright") and "prediction" not in n and "uncertainty" not in n for n in names)
    assert names.index("c_rgb labels") > names.index("c_rgb")
    dock.show_image("a_dim")  # back to grey: new layers again, the saved nothing of a_dim shown
    assert not dock.image_layer.rgb and dock.image_layer.data.shape == (96, 128)
    assert not dock.labels_layer.data.any()


def test_a_refilled_image_layer_gets_the_contrast_a_fresh_layer_would():
    """refill_layers puts another image in the shown layers: its contrast limits and their slider's
    range are those napari gives a new layer of that image (for a 16-bit image the data's range,
    not the whole 0-65535 of the type, which leaves the slider's useful part a sliver)."""
    from napari.layers import Image as ImageLayer, Labels

    from napari_hitl.napari._layers import refill_layers

    rng = np.random.default_rng(1)
    images = [(rng.integers(100, 3000, (40, 50)).astype(np.uint16), False),
              (rng.integers(500, 900, (30, 20)).astype(np.uint16), False),
              ((rng.random((30, 20)) * 5).astype(np.float32), False),
              (rng.integers(150, 255, (30, 20)).astype(np.uint8), False)]
    image, labels = ImageLayer(images[0][0]), Labels(np.zeros((40, 50), np.uint32))
    for img, rgb in images[1:]:
        lab = np.zeros(img.shape[:2], np.uint32)
        refill_layers(image, labels, [(img, {"name": "x", "rgb": rgb, "metadata": {}}, "image"),
                                      (lab, {"name": "x labels", "metadata": {}}, "labels")])
        fresh = ImageLayer(img, rgb=rgb)
        assert image.contrast_limits_range == fresh.contrast_limits_range, img.dtype
        assert image.contrast_limits == fresh.contrast_limits, img.dtype
    rgb_a, rgb_b = (rng.integers(0, 255, (20, 20, 3)).astype(np.uint8) for _ in range(2))
    image = ImageLayer(rgb_a, rgb=True)
    refill_layers(image, labels, [(rgb_b, {"name": "y", "rgb": True, "metadata": {}}, "image"),
                                  (np.zeros((20, 20), np.uint32), {"name": "y labels", "metadata": {}}, "labels")])
    fresh = ImageLayer(rgb_b, rgb=True)
    assert image.contrast_limits_range == fresh.contrast_limits_range
    assert image.contrast_limits == fresh.contrast_limits


def test_prompt_layers_that_cannot_serve_the_next_image_go_with_the_last_one(dock, qtbot, tmp_path):
    """The kept prompt layers serve the next image only above its labels layer; kept anyway (here
    the person moved the labels layer to the top) they stayed as the last image's, named for it."""
    viewer = dock.viewer
    dock.annotate.engine_box.setCurrentText("graph")
    dock.open_project(_project(tmp_path))
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    dock.run_action("click")
    dock.tools.click(40.0, 60.0, True)
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert "a_dim prompts" in viewer.layers
    viewer.layers.move(viewer.layers.index(dock.labels_layer), len(viewer.layers))
    dock.show_image("b_bright")
    assert not [lay.name for lay in viewer.layers if lay.name.startswith("a_dim")]
    dock.tools.click(30.0, 30.0, True)  # the next prompt makes them anew, above the labels
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    names = [lay.name for lay in viewer.layers]
    assert names.index("b_bright prompts") > names.index("b_bright labels")


def test_moving_between_images_works_on_a_napari_without_batched_layer_updates(dock, qtbot, tmp_path, monkeypatch):
    """LayerList.batched_update is new in napari (0.6.6 has none; the plugin asks for napari>=0.5):
    without it the layers that must go are removed one by one, as before, and nothing fails."""
    from napari.components import LayerList

    viewer = dock.viewer
    with monkeypatch.context() as m:
        m.delattr(LayerList, "batched_update")
        assert not hasattr(viewer.layers, "batched_update")
        dock.open_project(_project(tmp_path))  # the first image: its layers are made
        qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
        assert dock.current == "a_dim" and dock.labels_layer in viewer.layers
        dock.show_image("c_rgb")  # RGB after grey: the grey image's layers go
        assert dock.image_layer.rgb and "a_dim" not in viewer.layers
        qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)


def _mixed_project(tmp_path) -> Project:
    """Two plain 2-D images and two time-lapses (multi-page TIFFs of 6 and 4 frames) in one project."""
    import tifffile

    rng = np.random.default_rng(2)
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(folder / "a_flat.png")
    tifffile.imwrite(folder / "b_video.tif", rng.integers(0, 255, (6, 40, 56), dtype=np.uint8), photometric="minisblack")
    Image.fromarray(rng.integers(0, 255, (50, 60), dtype=np.uint8)).save(folder / "c_flat.png")
    tifffile.imwrite(folder / "d_video.tif", rng.integers(0, 255, (4, 36, 44), dtype=np.uint8), photometric="minisblack")
    return Project.create(tmp_path / "pm", folder, classes=["background", "cell"])


def _show_timelapse_extras(dock, name: str) -> None:
    """What a time-lapse leaves in the viewer: its prediction in the prediction layers (3-D) and
    a unit's outline in the video panel's layer."""
    from types import SimpleNamespace

    from napari_hitl.app.video import UnitRow
    from napari_hitl.napari._layers import label_colormap

    frames, h, w = dock.labels_layer.data.shape
    preds = [SimpleNamespace(pred=np.ones((h, w), np.uint8), margin=np.full((h, w), 0.5, np.float32))
             for _ in range(frames)]
    dock.prediction.show(name, preds, label_colormap(dock.project), below=dock.labels_layer)
    dock.video.go_to(UnitRow(0, 4, (5, 6, 20, 30), 0.0))
    assert dock.viewer.dims.current_step[0] == 4


def _assert_flat(dock) -> None:
    """Every layer 2-D, napari shows no frame slider, and the viewer spans the image, not a kept
    layer's last image."""
    viewer = dock.viewer
    assert {lay.name: lay.ndim for lay in viewer.layers} == {lay.name: 2 for lay in viewer.layers}
    assert viewer.dims.ndim == 2, viewer.dims.nsteps
    assert tuple(viewer.dims.nsteps) == dock.labels_layer.data.shape


def _show_flat_prediction(dock) -> None:
    """A prediction of the shown 2-D image in the prediction layers."""
    from types import SimpleNamespace

    from napari_hitl.napari._layers import label_colormap

    shape = dock.labels_layer.data.shape
    preds = [SimpleNamespace(pred=np.ones(shape, np.uint8), margin=np.full(shape, 0.5, np.float32))]
    dock.prediction.show(dock.current, preds, label_colormap(dock.project), below=dock.labels_layer)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "no-batched-update"])
def test_a_2d_image_after_a_timelapse_has_no_frame_slider(dock, qtbot, tmp_path, monkeypatch, batched):
    """Time-lapse -> 2-D image: the kept layers (prediction, uncertainty, objects) become 2-D
    and the unit outline goes, so napari shows no frame slider; 2-D -> time-lapse gets 3-D layers;
    2-D -> 2-D and time-lapse -> time-lapse still remove nothing, and the viewer spans the image shown
    (no kept layer holds the last one's size). Also on a napari without LayerList.batched_update."""
    from napari.components import LayerList

    with monkeypatch.context() as m:  # napari's teardown needs batched_update back
        if not batched:
            m.delattr(LayerList, "batched_update")
        _round_trip(dock, qtbot, tmp_path)


def _round_trip(dock, qtbot, tmp_path) -> None:
    from napari_hitl.napari._video import OUTLINE_LAYER

    viewer = dock.viewer
    dock.annotate.engine_box.setCurrentText("graph")
    dock.open_project(_mixed_project(tmp_path))
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert dock.current == "a_flat"
    _assert_flat(dock)

    # 2-D -> time-lapse: the image, labels and kept prediction layers are 3-D, with a frame slider
    dock.show_image("b_video")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert dock.image_layer.ndim == dock.labels_layer.ndim == 3
    assert all(lay.ndim == 3 for lay in dock.prediction.layers.values())
    assert viewer.dims.ndim == 3 and viewer.dims.nsteps[0] == 6
    _show_timelapse_extras(dock, "b_video")
    assert OUTLINE_LAYER in viewer.layers

    # time-lapse -> 2-D: every layer 2-D, no slider, no outline
    dock.show_image("c_flat")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert OUTLINE_LAYER not in viewer.layers
    assert dock.labels_layer.data.shape == (50, 60)
    _assert_flat(dock)
    _show_flat_prediction(dock)

    # 2-D -> 2-D: refilled in place, nothing removed
    removed = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    dock.show_image("a_flat")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert removed == []
    _assert_flat(dock)

    # the round trip again: back to the time-lapse (3-D, its outline made anew on a jump) and out
    dock.show_image("b_video")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert viewer.dims.ndim == 3 and all(lay.ndim == 3 for lay in dock.prediction.layers.values())
    _show_timelapse_extras(dock, "b_video")

    # time-lapse -> time-lapse: refilled, the 3-D layers kept, the last unit's outline emptied
    removed.clear()
    dock.show_image("d_video")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    assert removed == [] and len(viewer.layers[OUTLINE_LAYER].data) == 0
    assert all(lay.ndim == 3 for lay in viewer.layers if not lay.name.endswith("proposals"))
    assert viewer.dims.nsteps[0] == 4

    dock.show_image("a_flat")
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=WAIT)
    _assert_flat(dock)
