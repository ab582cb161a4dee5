"""Engine registry and the image normalisation every engine shares."""

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import Engine, available_engines, get_engine, register_engine
from napari_hitl.io import as_float_rgb
from napari_hitl.prompts import Click, RegionPrompts


@register_engine("_test_disk")
class _DiskEngine(Engine):
    def prepare(self, image):
        self.shape = image.shape[:2]

    def predict(self, region, prev_mask=None, others=()):
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        c = region.clicks[0]
        return (5.0 - np.hypot(yy - c.y, xx - c.x)).astype(np.float32)


def test_registry_roundtrip_and_unknown_name():
    assert "_test_disk" in available_engines() and "graph" in available_engines()
    eng = get_engine("_test_disk")
    eng.prepare(np.zeros((20, 20), np.uint8))
    m = eng.predict_mask(RegionPrompts(1, clicks=[Click(10, 10)]))
    assert m.dtype == bool and m[10, 10] and not m[0, 0]
    with pytest.raises(InputError, match="unknown engine 'nope'"):
        get_engine("nope")


def test_as_float_rgb():
    assert as_float_rgb(np.full((4, 5), 255, np.uint8)).shape == (4, 5, 3)
    out = as_float_rgb(np.array([[0, 1000]], np.uint16))
    assert out.max() == 1.0 and out.min() == 0.0
    assert as_float_rgb(np.zeros((3, 3, 4), np.uint8)).shape == (3, 3, 3)
    with pytest.raises(InputError, match="HxW or HxWx3"):
        as_float_rgb(np.zeros((3, 3, 5)))
