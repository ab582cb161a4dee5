"""Start napari with the annotation dock on a project (the sample project by default)."""

from __future__ import annotations


def launch(project_path: str | None = None, run: bool = True) -> int:
    """Open a viewer, dock the widget, load the project; block in napari's event loop if ``run``."""
    import napari

    from napari_hitl.samples import sample_project

    viewer = napari.Viewer(title="napari-hitl")
    _, widget = viewer.window.add_plugin_dock_widget("napari-hitl", "Annotation dock")
    widget.open_project(project_path if project_path else sample_project("nuclei"))
    if run:
        napari.run()
    return 0
