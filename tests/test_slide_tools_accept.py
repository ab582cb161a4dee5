"""SlideTools.accept on overlapping pending regions, without a viewer: what the pending layer
shows over the overlap is what Accept saves there."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")

from napari_hitl.interactive.engine import Window  # noqa: E402
from napari_hitl.prompts import Click, RegionPrompts  # noqa: E402

from test_app_slide import slide_session  # noqa: E402,F401


class _Layer:
    def __init__(self, data=None, translate=(0, 0)):
        self.data, self.translate, self.editable = data, translate, True

    def refresh(self):
        pass


class _Viewer:
    class _Layers(list):
        class _Selection:
            active = None

        selection = _Selection()

    def __init__(self):
        self.layers = self._Layers()

    def add_labels(self, data, translate=(0, 0), **kw):
        layer = _Layer(data, translate)
        self.layers.append(layer)
        return layer


def test_accept_saves_over_an_overlap_the_region_the_pending_layer_shows(slide_session):
    from napari_hitl.napari._slide import SlideRegion, SlideTools

    s, p = slide_session, slide_session.project
    tools = SlideTools(_Viewer(), None, None)
    tools.session, tools.name, tools.layer = s, "slide", _Layer()
    a, b = s.reserve_id("slide"), s.reserve_id("slide")
    first = SlideRegion(a, RegionPrompts(1, [Click(120.0, 120.0, True)]), Window(np.ones((100, 100), bool), 100, 100))
    second = SlideRegion(b, RegionPrompts(1, [Click(180.0, 180.0, True)]), Window(np.ones((100, 100), bool), 150, 150))
    tools.regions = [first, second]  # the second one was prompted last
    tools.show()
    y0, x0 = (int(v) for v in tools.pending.translate)
    shown = np.asarray(tools.pending.data)[160 - y0, 160 - x0]  # a pixel both answers hold
    tools.accept()
    ids, _, _ = p.read_window("slide", 100, 100, 250, 250)
    assert ids[160 - 100, 160 - 100] == shown
    assert (ids == a).any() and (ids == b).any()
