"""Start napari with the annotation dock on a project (the sample project by default)."""

from __future__ import annotations


def launch(project_path: str | None = None, run: bool = True) -> int:
    """Open a viewer, dock the widget, load the project; block in napari's event loop if ``run``."""
    import napari

    from napari_hitl.samples import sample_project

    from napari_hitl.napari._widget import HitlWidget

    viewer = napari.Viewer(title="napari-hitl")
    widget = HitlWidget(viewer)
    # the title napari gives the dock from Plugins > Annotation dock (Human-in-the-loop segmentation)
    viewer.window.add_dock_widget(widget, name=dock_title(), area="right")
    widget.open_project(project_path if project_path else sample_project("nuclei"))
    if run:
        napari.run()
    return 0


def dock_title() -> str:
    """'Annotation dock (Human-in-the-loop segmentation)': the widget's and the plugin's display
    names from the manifest, as napari's Plugins menu writes them."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest("napari-hitl")
    (widget,) = manifest.contributions.widgets
    return f"{widget.display_name} ({manifest.display_name})"
