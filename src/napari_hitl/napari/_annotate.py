"""The dock's Annotate group: tool buttons, the class of new objects, engine, full-image mode,
brush, the prompt and accept actions and the object edits (delete, merge, split, undo). It
holds no state of its own and tells the dock with signals."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_hitl.napari._tools import MODE_TITLES, SHORTCUTS


class AnnotatePanel(QGroupBox):
    """Controls of the interactive tools (see the module docstring)."""

    #: a tool button was pressed (a mode of :data:`~napari_hitl.napari._tools.MODES`)
    mode_chosen = Signal(str)
    #: the engine box chose an engine by name
    engine_chosen = Signal(str)
    #: full-image mode switched on or off
    full_image_toggled = Signal(bool)
    #: napari's brush size
    brush_changed = Signal(int)
    #: the class box chose a class id
    class_chosen = Signal(int)
    #: a button asks for a named action: new_region, undo, reset, accept, next
    action_requested = Signal(str)

    def __init__(self, engine: str, full_image: bool):
        super().__init__("Annotate")
        lay = QVBoxLayout(self)
        grid = QGridLayout()  # three tools a row: the dock stays narrow
        self.tool_buttons = {}
        self.tool_group = QButtonGroup(self)
        self.tool_group.setExclusive(True)
        keys = {mode: key.replace("-", "+") for key, (_, mode) in SHORTCUTS.items()}  # one table of keys
        for k, mode in enumerate(("click", "scribble", "extreme", "suggest", "off")):
            b = QPushButton(MODE_TITLES[mode].replace(" (napari tools)", ""))
            b.setCheckable(True)
            tips = {"click": "left click: positive, right click or Ctrl+click: negative",
                    "scribble": "drag across the object (right button or Ctrl: negative); a scribble that "
                                "starts in one region and enters another extends the first and shrinks the other",
                    "extreme": "click the leftmost, rightmost, top and bottom points of an object (any order)",
                    "suggest": "click a suggested superpixel: left keeps its predicted class, right relabels it",
                    "off": "napari's own label tools (paint, erase, fill)"}
            b.setToolTip(f"{tips[mode]}{f' ({keys[mode]})' if mode in keys else ''}")
            self.tool_group.addButton(b)
            self.tool_buttons[mode] = b
            b.clicked.connect(lambda _=False, m=mode: self.mode_chosen.emit(m))
            grid.addWidget(b, k // 3, k % 3)
        self.tool_buttons["off"].setChecked(True)
        lay.addLayout(grid)
        row = QHBoxLayout()
        row.addWidget(QLabel("Class"))
        self.class_box = QComboBox()
        self.class_box.setToolTip("the class of new objects (clicks, scribbles, extreme points, napari's "
                                  "brush); picking an object shows its class")
        row.addWidget(self.class_box, 1)
        row.addWidget(QLabel("Engine"))
        self.engine_box = QComboBox()
        from napari_hitl.interactive.engine import available_engines

        self.engine_box.addItems(available_engines())
        self.engine_box.setCurrentText(engine)
        self.engine_box.setToolTip("clicknet: learned click model (fast); graph: random walker on colour "
                                   "(no weights)")
        row.addWidget(self.engine_box)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.full_image = QCheckBox("Full-image mode")
        self.full_image.setChecked(full_image)
        self.full_image.setToolTip("regions compete for every pixel: one region's prompts tell the others "
                                   "to shrink (off: each region on its own)")
        row.addWidget(self.full_image)
        row.addWidget(QLabel("Brush"))
        self.brush = QSpinBox()
        self.brush.setRange(1, 200)
        self.brush.setValue(10)
        self.brush.setToolTip("napari's paint / erase brush size ([ and ])")
        row.addWidget(self.brush)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.new_region_button = QPushButton("New region")
        self.new_region_button.setToolTip("the next positive prompt starts a new region (N)")
        self.undo_button = QPushButton("Undo prompt")
        self.undo_button.setToolTip("remove the last click, scribble or extreme point (Backspace); "
                                    "Ctrl+Z undoes mask edits as in napari")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("forget this image's prompts; its labels go back to how they were (R)")
        for b in (self.new_region_button, self.undo_button, self.reset_button):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept labels")
        self.accept_button.setToolTip("Save the labels layer as human labels of this image (Ctrl+Enter)")
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("the next image that is not fully labelled, in ranked order (Shift+N)")
        row.addWidget(self.accept_button)
        row.addWidget(self.next_button)
        lay.addLayout(row)
        row = QHBoxLayout()  # object edits: saved and journalled at once
        self.object_buttons = {}
        for action, title, tip in (
                ("delete_object", "Delete", "delete the selected object (napari's selected label)"),
                ("merge_objects", "Merge", "merge the object picked before into the selected one"),
                ("split_object", "Split", "split the selected object: a stroke across it, or a click on each part"),
                ("undo_edit", "Undo edit", "take back the last delete, merge or split")):
            b = QPushButton(title)
            b.setToolTip(f"{tip} (saved at once)")
            self.object_buttons[action] = b
            row.addWidget(b)
        lay.addLayout(row)


        self.class_box.currentIndexChanged.connect(self._class_index)
        self.engine_box.currentTextChanged.connect(self.engine_chosen.emit)
        self.full_image.toggled.connect(lambda on: self.full_image_toggled.emit(bool(on)))
        self.brush.valueChanged.connect(self.brush_changed.emit)
        for action, button in (("new_region", self.new_region_button), ("undo", self.undo_button),
                               ("reset", self.reset_button), ("accept", self.accept_button),
                               ("next", self.next_button), *self.object_buttons.items()):
            button.clicked.connect(lambda _=False, a=action: self.action_requested.emit(a))

    def _class_index(self, index: int) -> None:
        cid = self.class_box.itemData(index)
        if cid is not None:
            self.class_chosen.emit(int(cid))

    def set_classes(self, classes) -> None:
        """Offer ``classes`` (ClassInfo, background left out) without announcing a choice."""
        self.class_box.blockSignals(True)
        self.class_box.clear()
        for c in classes:
            self.class_box.addItem(f"{c.id}: {c.name}", c.id)
        self.class_box.blockSignals(False)

    def show_class(self, cid: int) -> None:
        """Show class ``cid`` as chosen (the picked object has it) without announcing a choice."""
        idx = self.class_box.findData(int(cid))
        if idx >= 0 and idx != self.class_box.currentIndex():
            self.class_box.blockSignals(True)
            self.class_box.setCurrentIndex(idx)
            self.class_box.blockSignals(False)

    def show_mode(self, mode: str) -> None:
        """Check the button of ``mode``."""
        button = self.tool_buttons.get(mode)
        if button is not None and not button.isChecked():
            button.setChecked(True)

    def show_engine(self, name: str) -> None:
        if self.engine_box.currentText() != name:
            self.engine_box.setCurrentText(name)
