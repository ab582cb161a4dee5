"""A titled part of the dock that folds away, so the dock fits napari's default window."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy, QToolButton, QVBoxLayout, QWidget


class Section(QWidget):
    """``widget`` under a title button that folds it away; a folded part takes no room."""

    def __init__(self, title: str, widget: QWidget, expanded: bool):
        super().__init__()
        self.widget = widget
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.setStyleSheet("QToolButton { border: none; font-weight: bold; text-align: left; }")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(widget)
        self.button.toggled.connect(self._show)
        self.button.setChecked(expanded)
        self._show(expanded)

    def _show(self, on: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.widget.setVisible(on)

    def expand(self) -> None:
        self.button.setChecked(True)

    def collapse(self) -> None:
        self.button.setChecked(False)

    def is_expanded(self) -> bool:
        return self.button.isChecked()


def section(title: str, widget: QWidget, expanded: bool) -> Section:
    """``widget`` under a title that folds it away (open if ``expanded``)."""
    return Section(title, widget, expanded)
