"""The click engine on a large image read lazily: it reads only the crops it works on, answers
with the logits of the crop window, and gives the same answer as on the image in memory."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hitl import io
from napari_hitl.errors import InputError
from napari_hitl.interactive import clicknet as cn
from napari_hitl.interactive.engine import Window
from napari_hitl.prompts import Click, RegionPrompts


def _slide(h=2400, w=2000):
    """Pale noisy background with dark discs (radius 30) on a 200 px grid; their centres."""
    rng = np.random.default_rng(0)
    img = rng.normal(225, 6, (h, w, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    centres = [(y, x) for y in range(100, h, 200) for x in range(100, w, 200)]
    for cy, cx in centres:
        sl = (slice(cy - 40, cy + 41), slice(cx - 40, cx + 41))
        inside = (yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2 <= 30 ** 2
        img[sl][inside] = (90, 40, 120)
    return img, centres


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    img, centres = _slide()
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), subifds=2, compression="zlib", photometric="rgb")
        tw.write(img[::2, ::2], tile=(256, 256), subfiletype=1, compression="zlib", photometric="rgb")
        tw.write(img[::4, ::4], tile=(256, 256), subfiletype=1, compression="zlib", photometric="rgb")
    return img, centres, path


@pytest.fixture(scope="module")
def engine():
    """The network's own answer (no refocus, no finishing), so crops and answers can be compared."""
    return cn.ClickNetEngine(first_crop=512, refocus=False, snap=0.0, obey=False, sweep=False)


def _disc(shape, cy, cx, r=30):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_read_crop_matches_the_crop_of_the_image_in_memory(slide):
    img, _, path = slide
    full = io.as_float_rgb(img)
    with io.open_lazy(path) as lazy:
        for crop in [(1000.3, 700.6, 300.0), (-50.0, 1900.0, 200.0)]:  # level 0; one past the image edge
            np.testing.assert_allclose(cn.read_crop(lazy, crop), cn.warp_to_crop(full, crop), atol=5e-4)  # cv2 fixed-point weights
        crop = (200.0, 100.0, 1500.0)  # a large crop reads a coarser level, which resolves it as well
        got, want = cn.read_crop(lazy, crop), cn.warp_to_crop(full, crop)
        assert np.abs(got - want).mean() < 0.02


def test_a_click_reads_only_its_window_and_segments_the_object(slide, engine, monkeypatch):
    img, centres, path = slide
    reads = []
    original = io.LazyImage.read

    def spy(self, y0, x0, y1, x1, level=0):
        reads.append((y1 - y0) * (x1 - x0) * 4 ** level)  # full-resolution pixels it stands for
        return original(self, y0, x0, y1, x1, level)

    monkeypatch.setattr(io.LazyImage, "read", spy)
    with io.open_lazy(path) as lazy:
        engine.prepare(lazy)
        assert reads == [] and engine.large and engine.shape == img.shape[:2]  # uint8: nothing read yet
        cy, cx = centres[23]
        region = RegionPrompts(1, [Click(cy + 3, cx - 2)])
        win = engine.predict_window(region)
        y0, x0, y1, x1 = win.box
        assert y0 <= cy <= y1 and x0 <= cx <= x1
        assert 500 <= y1 - y0 <= 520 and 500 <= x1 - x0 <= 520  # the first crop: a 512 px window
        assert sum(reads) < 2 * 520 * 520  # a window around the click, not the 2400x2000 image
        truth = _disc(img.shape[:2], cy, cx)[y0:y1, x0:x1]
        mask = win.data > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
        # the next click corrects the object: the previous mask goes as a window, so does the answer
        reads.clear()
        region.clicks.append(Click(cy - 20, cx + 10))
        win2 = engine.predict_window(region, prev_mask=Window(mask, y0, x0))
        assert (win2.box[2] - win2.box[0]) < 200  # the crop zoomed in on the object
        truth2 = _disc(img.shape[:2], cy, cx)[win2.box[0]:win2.box[2], win2.box[1]:win2.box[3]]
        m2 = win2.data > 0
        assert (m2 & truth2).sum() / (m2 | truth2).sum() > 0.8
        assert sum(reads) < 200 * 200


def test_same_answer_as_on_the_image_in_memory(slide, engine):
    img, centres, path = slide
    sub = img[:1000, :900]
    cy, cx = centres[11]
    prev = _disc(sub.shape[:2], cy, cx, r=24)  # a previous mask fixes the crop for both
    region = RegionPrompts(1, [Click(cy, cx), Click(cy + 27, cx, positive=True)])
    engine.prepare(sub)
    want = engine.predict(region, prev_mask=prev)
    np.testing.assert_array_equal(engine.predict_window(region, prev_mask=prev).full(sub.shape[:2], -20.0), want)
    tifffile.imwrite(path.with_name("sub.tif"), sub, tile=(128, 128), photometric="rgb")
    with io.open_lazy(path.with_name("sub.tif")) as lazy:
        engine.prepare(lazy)
        win = engine.predict_window(region, prev_mask=Window(prev[200:600, 200:600], 200, 200))
    got = win.full(sub.shape[:2], np.float32(cn.OUTSIDE_LOGIT))
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_large_image_errors(slide, engine):
    img, centres, path = slide
    with io.open_lazy(path) as lazy:
        engine.prepare(lazy)
        with pytest.raises(InputError, match="predict_window"):
            engine.predict(RegionPrompts(1, [Click(10, 10)]))
        with pytest.raises(InputError, match="outside"):
            engine.predict_window(RegionPrompts(1, [Click(2400, 10)]))
        with pytest.raises(InputError, match="reaches past"):
            engine.predict_window(RegionPrompts(1, [Click(10, 10)]), prev_mask=Window(np.ones((5, 5), bool), 2398, 0))
        with pytest.raises(InputError, match="positive"):
            engine.predict_window(RegionPrompts(1, [Click(10, 10, positive=False)]))
        with pytest.raises(InputError, match="read lazily"):
            io.as_float_rgb(lazy)
    with pytest.raises(InputError, match="first_crop"):
        cn.ClickNetEngine(first_crop=8)
    with pytest.raises(InputError, match="2-D"):
        Window(np.zeros((2, 2, 2)), 0, 0)


def test_full_image_mode_over_windows(slide, engine):
    from napari_hitl.interactive.canvas import segment_full_image, segment_windows

    img, centres, path = slide
    sub = img[:800, :800]
    (ay, ax), (by, bx) = centres[11], centres[12]  # two neighbouring discs, 200 px apart
    regions = [RegionPrompts(1, [Click(ay, ax)]), RegionPrompts(2, [Click(by, bx)])]
    want = segment_full_image(engine, sub, regions)
    got = segment_windows(engine, regions)  # the same prepared image: the same answer, as a window
    np.testing.assert_array_equal(got.full(sub.shape[:2], 0), want)
    tifffile.imwrite(path.with_name("sub8.tif"), sub, tile=(128, 128), photometric="rgb")
    with io.open_lazy(path.with_name("sub8.tif")) as lazy:
        engine.prepare(lazy)
        win = segment_windows(engine, regions)
    y0, x0, y1, x1 = win.box
    assert y1 - y0 < 800 or x1 - x0 < 800  # the union of two first crops, not the image
    for label, (cy, cx) in zip((1, 2), ((ay, ax), (by, bx))):
        truth = _disc(sub.shape[:2], cy, cx)[y0:y1, x0:x1]
        mask = win.data == label
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
    with pytest.raises(InputError, match="share the label"):
        segment_windows(engine, [RegionPrompts(1, [Click(ay, ax)]), RegionPrompts(1, [Click(by, bx)])])


def test_refocus_and_flip_work_on_a_large_image_finishing_needs_the_whole_image(slide):
    img, centres, path = slide
    eng = cn.ClickNetEngine(first_crop=512, refocus=True, flip=True, snap=0.0, obey=False, sweep=False)
    cy, cx = centres[40]
    with io.open_lazy(path) as lazy:
        eng.prepare(lazy)
        win = eng.predict_window(RegionPrompts(1, [Click(cy, cx)]))
        assert win.data.shape[0] < 200  # refocused on the object: a closer crop than the 512 px first one
        truth = _disc(img.shape[:2], cy, cx)[win.y0:win.box[2], win.x0:win.box[3]]
        mask = win.data > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8


def test_default_finishing_works_on_the_window_of_a_large_image(slide, monkeypatch):
    img, centres, path = slide
    eng = cn.ClickNetEngine(first_crop=512, sweep=True)  # edge snap, obedience and refocus by default
    assert eng.snap and eng.obey and eng.sweep and eng.refocus
    reads = []
    original = io.LazyImage.read
    monkeypatch.setattr(io.LazyImage, "read",
                        lambda self, y0, x0, y1, x1, level=0: reads.append((y1 - y0) * (x1 - x0) * 4 ** level)
                        or original(self, y0, x0, y1, x1, level))
    cy, cx = centres[52]
    with io.open_lazy(path) as lazy:
        eng.prepare(lazy)
        region = RegionPrompts(1, [Click(cy, cx)])
        win = eng.predict_window(region)
        truth = _disc(img.shape[:2], cy, cx)[win.y0:win.box[2], win.x0:win.box[3]]
        mask = win.data > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.85
        # a negative click beside the object, inside the answer's window: obeyed (and swept)
        region.clicks.append(Click(cy - 45, cx, positive=False))
        win2 = eng.predict_window(region, prev_mask=Window(mask, win.y0, win.x0))
        y, x = cy - 45 - win2.y0, cx - win2.x0
        assert 0 <= y < win2.data.shape[0] and win2.data[y, x] <= 0
        assert sum(reads) < 3 * 520 * 520  # crops and their cues: windows, never the image


def test_scribbles_and_extreme_points_read_only_their_window_on_a_large_image(slide, engine, monkeypatch):
    from napari_hitl.prompts import ExtremePoints, Scribble

    img, centres, path = slide
    reads = []
    original = io.LazyImage.read
    monkeypatch.setattr(io.LazyImage, "read",
                        lambda self, y0, x0, y1, x1, level=0: reads.append((y1 - y0) * (x1 - x0) * 4 ** level)
                        or original(self, y0, x0, y1, x1, level))
    with io.open_lazy(path) as lazy:
        engine.prepare(lazy)
        cy, cx = centres[33]
        region = RegionPrompts(1, scribbles=[Scribble(np.array([[cy - 15, cx - 15], [cy, cx], [cy + 15, cx + 10]]))])
        win = engine.predict_window(region)
        truth = _disc(img.shape[:2], cy, cx)[win.y0:win.box[2], win.x0:win.box[3]]
        mask = win.data > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
        assert sum(reads) < 2 * 520 * 520  # the crop around the scribble, not the image
        reads.clear()
        cy, cx = centres[47]
        region = RegionPrompts(1, extreme=ExtremePoints(np.array([[cy, cx - 30], [cy, cx + 30], [cy - 30, cx],
                                                                  [cy + 30, cx]], np.float64)))
        win = engine.predict_window(region)
        assert win.data.shape[0] < 120  # the extreme points' box with a margin
        truth = _disc(img.shape[:2], cy, cx)[win.y0:win.box[2], win.x0:win.box[3]]
        mask = win.data > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
        assert sum(reads) < 200 * 200
