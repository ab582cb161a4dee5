"""Layer data for a project image: what the reader, the samples and the dock all add; a large
image (whole-slide TIFF, zarr) as a multiscale layer, and a project's large image with its
labels as a multiscale Labels layer read chunk by chunk.

Layers carry ``metadata['hitl_project']`` and ``metadata['hitl_image']`` so the dock can
adopt a project that a reader or a sample opened.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from napari_hitl.project import Project

META_PROJECT = "hitl_project"
META_IMAGE = "hitl_image"
#: the class of each object id shown in a Labels layer ({id: class})
META_CLASSES = "hitl_classes"


def label_colormap(project: Project):
    """A direct label colormap from the project's class table (background transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for c in project.classes[1:]:
        colors[c.id] = tuple(v / 255 for v in c.color) + (1.0,)
    return DirectLabelColormap(color_dict=colors)


def image_layer_data(project: Project, name: str) -> list[tuple]:
    """``[(image, kwargs, 'image'), (objects, kwargs, 'labels')]`` for one project image: the
    Labels layer holds an id per object (napari's colours per object) and the class of each
    id in its metadata."""
    rec = project.record(name)
    if project.is_slide(name):
        return slide_layer_data(project, name)
    image = project.read_image(name)
    ids, _, classes = project.read_instances(name)
    meta = {META_PROJECT: str(project.root), META_IMAGE: rec.name}
    return [
        (image, {"name": rec.name, "rgb": rec.channels == 3, "metadata": dict(meta)}, "image"),
        (ids, {"name": f"{rec.name} labels", "metadata": {**meta, META_CLASSES: dict(classes)}, "opacity": 0.6},
         "labels"),
    ]


def can_refill(image_layer, labels_layer, data: list[tuple]) -> bool:
    """Whether the shown image and labels layers can take ``data`` (:func:`image_layer_data` of
    another image) in place (see :func:`refill_layers`): neither multiscale, the same colour mode
    and dimensions."""
    (img, img_kw, _), (lab, lab_kw, _) = data
    if image_layer is None or labels_layer is None or img_kw.get("multiscale") or lab_kw.get("multiscale"):
        return False
    if image_layer.multiscale or labels_layer.multiscale or bool(image_layer.rgb) != bool(img_kw["rgb"]):
        return False
    return image_layer.ndim == img.ndim - int(bool(img_kw["rgb"])) and labels_layer.ndim == lab.ndim


def refill_layers(image_layer, labels_layer, data: list[tuple]) -> None:
    """Put ``data`` (:func:`image_layer_data` of another image) into the shown image and labels
    layers (when :func:`can_refill`). A removed layer costs napari a full garbage collection on
    the UI thread (about 0.3 s per layer with napari loaded), so moving between images reuses
    them. The labels layer's undo history goes with the image it belonged to."""
    from napari.layers.utils.layer_utils import calc_data_range

    (img, img_kw, _), (lab, lab_kw, _) = data
    image_layer.data = img
    # what napari gives a new layer of an array: limits and their slider's range both the data's
    # range (reset_contrast_limits_range would stretch the slider over a 16-bit type's 0-65535)
    limits = calc_data_range(img, rgb=bool(img_kw["rgb"]))
    image_layer.contrast_limits_range = limits
    image_layer.contrast_limits = limits
    labels_layer.data = lab
    labels_layer._reset_history()  # napari's Ctrl+Z must not paint the last image's edits here
    for layer, kw in ((image_layer, img_kw), (labels_layer, lab_kw)):
        layer.name, layer.metadata = kw["name"], kw["metadata"]


def empty_hidden(layer, data) -> None:
    """Put ``data`` (a kept layer's small empty array) into ``layer`` and hide it, with napari's
    extent of the layer following the new data. napari (0.9) recomputes a layer's extent only when
    it refreshes, and never refreshes a hidden one, so a layer hidden before (or while) it was
    emptied kept the last image's size and frame count in the viewer: a frame slider of a
    time-lapse no longer shown, and a view fitted to the last image."""
    layer.data = data
    if not layer.visible:  # (shown for no paint: the UI thread does not return to Qt meanwhile)
        layer.visible = True
    layer.refresh()  # a visible layer's refresh recomputes its extent (a tiny array: cheap)
    layer.visible = False


#: an Image layer showing a large image read lazily carries its path here
META_LARGE = "hitl_large_image"
#: ... and the open :class:`~napari_hitl.io.LazyImage` it reads, which the dock closes when the
#: layer is removed (:func:`close_lazy`)
META_LAZY = "hitl_lazy_image"


def slide_layer_data(project: Project, name: str) -> list[tuple]:
    """:func:`image_layer_data` of a large image: the image as a multiscale layer and its saved
    objects as a multiscale Labels layer, both read only where napari looks (the project's
    label chunks; each read sees the latest commit)."""
    rec = project.record(name)
    img = project.open_image(name)
    meta = {META_PROJECT: str(project.root), META_IMAGE: rec.name}
    (levels, kwargs, _), = _multiscale(img, rec.name, meta)
    return [(levels, kwargs, "image"),
            (project.lazy_instances(name), {"name": f"{rec.name} labels", "multiscale": True, "opacity": 0.6,
                                            "metadata": {**meta, META_CLASSES: {}}}, "labels")]


def large_image_layer_data(path) -> list[tuple]:
    """``[(levels, kwargs, 'image')]``: a large TIFF or zarr image as a multiscale Image layer
    (its pyramid as array-likes, full resolution first), so napari reads only the tiles it
    shows, at the level the zoom needs. The file stays open while the layer uses it."""
    from napari_hitl import io

    return _multiscale(io.open_lazy(path), Path(path).stem, {META_LARGE: str(Path(path).resolve())})


def _multiscale(img, name: str, metadata: dict) -> list[tuple]:
    kwargs = {"name": name, "rgb": img.channels == 3, "multiscale": True, "metadata": {**metadata, META_LAZY: img}}
    try:
        value_range = img.value_range()
    except BaseException:  # a damaged or NaN image: no layer, so nothing keeps the file open
        img.close()
        raise
    if value_range is None:  # uint8: nothing to compute
        value_range = (0.0, 255.0)
    if value_range[1] <= value_range[0]:
        value_range = (value_range[0], value_range[0] + 1.0)
    kwargs["contrast_limits"] = list(value_range)
    return [(img.arrays(), kwargs, "image")]


def close_lazy(layer) -> None:
    """Close the file a removed multiscale layer of a large image read (see :data:`META_LAZY`)."""
    img = getattr(layer, "metadata", {}).get(META_LAZY)
    if img is not None:
        img.close()


def show_saved(layer, session, name: str, frame: int | None, mask) -> None:
    """Show the saved objects of ``name`` on the pixels in ``mask`` in the dock's Labels layer
    (outside ``mask`` the layer keeps what the person has not saved yet); outside napari's
    undo history, as the project already holds them."""
    import numpy as np

    saved, _, classes = session.read_instances(name, frame=frame)
    ys, xs = np.nonzero(mask)
    idx = (ys, xs) if frame is None else (np.full_like(ys, frame), ys, xs)
    with layer.block_history():
        layer.data_setitem(idx, saved[ys, xs].astype(layer.data.dtype))
    layer.metadata[META_CLASSES] = {**layer.metadata.get(META_CLASSES, {}), **classes}


def dock_in_current_viewer() -> None:
    """Dock the annotation widget in the current viewer, if there is one and it is not docked
    (the dock then adopts the project of the layers a reader or a sample added)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return
    from napari_hitl.napari._widget import find_dock

    if find_dock(viewer) is None:  # under the title napari's Plugins menu gives it
        from napari_hitl.napari._widget import HitlWidget
        from napari_hitl.napari.app import dock_title

        viewer.window.add_dock_widget(HitlWidget(viewer), name=dock_title(), area="right")


def claim_project_folder(root) -> None:
    """Tell napari that this project folder opens with napari-hitl, as ticking "remember" in
    napari's reader dialog would, so ``napari PROJECT`` asks nothing (a folder is also
    claimed by napari's own folder reader, so napari would otherwise ask)."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    pattern = glob.escape(os.path.realpath(str(Path(root)))) + os.sep
    if plugins.extension2reader.get(pattern) != "napari-hitl":
        plugins.extension2reader = {**plugins.extension2reader, pattern: "napari-hitl"}
