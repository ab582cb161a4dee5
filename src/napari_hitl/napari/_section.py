"""A titled part of the dock that folds away, so the dock fits napari's default window."""

from __future__ import annotations

from qtpy.QtWidgets import QWidget
from superqt import QCollapsible


def section(title: str, widget: QWidget, expanded: bool) -> QCollapsible:
    """``widget`` under a title that folds it away (open if ``expanded``)."""
    part = QCollapsible(title)
    part.addWidget(widget)
    if expanded:
        part.expand(animate=False)
    else:
        part.collapse(animate=False)
    return part
