"""Moving between images in the dock: the image, labels and prompt layers are refilled, not
removed and made again (a removed layer costs napari a full garbage collection on the UI
thread), and nothing of the last image leaks into the next: data, names, contrast, prompts,
napari's undo history."""

from __future__ import annotations

import numpy as np
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
