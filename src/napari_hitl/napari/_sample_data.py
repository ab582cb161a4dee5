"""File > Open Sample: ready-to-try sample projects (the dock docks itself and adopts them)."""

from __future__ import annotations

from napari_hitl.samples import sample_project


def _open(name: str) -> list[tuple]:
    from napari_hitl.napari._layers import image_layer_data

    from napari_hitl.napari._layers import dock_in_current_viewer

    with sample_project(name) as project:
        layers = image_layer_data(project, project.images[0].name)
    dock_in_current_viewer()
    return layers


def sample_nuclei() -> list[tuple]:
    """Four nucleus images (BBBC038, CC0) as a project, first image shown with its labels."""
    return _open("nuclei")


def sample_timelapse() -> list[tuple]:
    """A 12-frame drifting-nuclei time-lapse as a project."""
    return _open("timelapse")
