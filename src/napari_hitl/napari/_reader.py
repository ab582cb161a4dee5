"""npe2 reader: a project folder opens its first image with labels and the dock (which lists
every image); an image folder opens its images; a large image (a TIFF above
``io.LAZY_PIXELS`` pixels, or a zarr image) opens as a multiscale layer, read tile by tile."""

from __future__ import annotations

from pathlib import Path

from napari_hitl import io
from napari_hitl.errors import HitlError
from napari_hitl.project import Project, is_project

#: an image folder with more images than this opens only the first ones (napari keeps all in memory)
MAX_LAYERS = 50


def get_reader(path):
    """Return a reader for a napari-hitl project folder or a folder of images, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".tif", ".tiff"):
        try:
            return read_large_image if io.is_large(p) else None
        except HitlError:
            return None
    if not p.is_dir():
        return None
    if is_project(p):
        return read_project
    if p.suffix.lower() == ".zarr":
        return read_large_image
    try:
        return read_image_folder if io.list_images(p) else None
    except HitlError:
        return None


def read_project(path) -> list[tuple]:
    """Layers of the project's first image; the dock docks itself and adopts the project (it
    lists every image). The folder is claimed in napari's reader preferences, so next time
    ``napari PROJECT`` opens it without asking which reader to use."""
    from napari_hitl.napari._layers import claim_project_folder, dock_in_current_viewer, image_layer_data

    path = path[0] if isinstance(path, (list, tuple)) else path
    project = Project.open(path, readonly=True)
    layers = image_layer_data(project, project.images[0].name)
    claim_project_folder(project.root)
    if not project.is_slide(project.images[0].name):
        project.close()  # a large image's labels layer reads the project as napari asks: it stays open
    dock_in_current_viewer()
    return layers


def read_image_folder(path) -> list[tuple]:
    """Every image of the folder as a layer (up to MAX_LAYERS, with a warning beyond)."""
    import warnings

    path = path[0] if isinstance(path, (list, tuple)) else path
    files = io.list_images(path)
    if len(files) > MAX_LAYERS:
        warnings.warn(f"{path} holds {len(files)} images; opening the first {MAX_LAYERS}. "
                      "Create a project from the folder to work through all of them.", stacklevel=2)
    layers = []
    for f in files[:MAX_LAYERS]:
        img = io.read_image(f)
        layers.append((img, {"name": f.stem, "rgb": img.ndim >= 3 and img.shape[-1] == 3}, "image"))
    return layers


def read_large_image(path) -> list[tuple]:
    """A large TIFF or zarr image as one multiscale Image layer (nothing read until shown)."""
    from napari_hitl.napari._layers import large_image_layer_data

    path = path[0] if isinstance(path, (list, tuple)) else path
    return large_image_layer_data(path)
