"""Native-resolution finishing of click logits: the edge snap's contract and effect, click
obedience (a violated click moves the whole part it lands on), and the engine's guarantee that
a positive click's pixel ends inside its mask."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.interactive.refine import ImageCues, obey_clicks, snap_to_edges
from napari_hitl.prompts import Click, RegionPrompts


def _two_squares():
    """Grey image: two bright squares (rows 20-60, cols 20-60 and 20-60, 80-120) on dark."""
    img = np.full((100, 140), 0.1, np.float32)
    img[20:60, 20:60] = 0.9
    img[20:60, 80:120] = 0.8
    return img


def test_snap_contract_and_it_moves_a_blurred_boundary_to_the_edge():
    img = np.full((80, 80), 0.2, np.float32)
    img[:, 40:] = 0.8  # a vertical edge between columns 39 and 40
    cues = ImageCues.of(img)
    assert cues.guide.shape == (80, 80) and cues.guide.dtype == np.float32
    assert cues.gradient.dtype == np.uint8
    # smooth logits whose zero crossing is 4 pixels left of the edge
    cols = np.arange(80, dtype=np.float32)
    logits = np.tile((cols - 35.5) * 0.5, (80, 1)).astype(np.float32)
    logits[:, :5] = -20.0  # "outside the crop": far from the band, must not change
    before = logits.copy()
    snap_to_edges(logits, cues, radius=6, eps=1e-3)
    assert logits.dtype == np.float32 and logits.shape == (80, 80) and np.isfinite(logits).all()
    assert (logits[:, :5] == -20.0).all()
    assert not np.array_equal(logits, before)
    # the boundary now sits on the image edge
    row = logits[40] > 0
    assert not row[:39].any() or np.flatnonzero(row)[0] >= 38, np.flatnonzero(row)[:3]
    assert row[40:75].all()
    with pytest.raises(InputError, match="do not match"):
        snap_to_edges(np.zeros((5, 5), np.float32), cues, radius=2)


def test_positive_click_adds_the_whole_missed_part_bounded_by_edges():
    img = _two_squares()
    cues = ImageCues.of(img)
    logits = np.full(img.shape, -1.0, np.float32)  # unsure background everywhere...
    logits[:, :8] = -10.0  # ...confident at the left border
    logits[:, 130:] = -10.0
    logits[20:60, 20:60] = 5.0  # the first square is in the mask
    region = RegionPrompts(1, [Click(40, 40), Click(40, 100)])
    assert obey_clicks(logits, cues, region) == 1  # only the second click was violated
    mask = logits > 0
    assert mask[40, 100] and mask[20:60, 80:120].mean() > 0.95  # the whole second square
    assert mask[70:, :].mean() < 0.05 and mask[:, 65:75].mean() < 0.05  # not the background


def test_negative_click_removes_the_whole_false_part_and_keeps_the_true_one():
    img = _two_squares()
    cues = ImageCues.of(img)
    logits = np.full(img.shape, -10.0, np.float32)
    logits[20:60, 20:60] = 6.0  # true part, confident
    logits[20:60, 60:120] = 0.5  # a false part joined to it, unsure
    region = RegionPrompts(1, [Click(40, 40), Click(40, 100, positive=False)])
    assert obey_clicks(logits, cues, region) == 1
    mask = logits > 0
    assert not mask[40, 100] and mask[20:60, 80:120].mean() < 0.05  # the whole false square is gone
    assert mask[20:60, 20:60].all()  # the true one stays
    # nothing violated: nothing changes
    before = logits.copy()
    assert obey_clicks(logits, cues, region) == 0 and np.array_equal(before, logits)


def test_obey_rejects_mismatched_shapes_and_outside_clicks():
    cues = ImageCues.of(_two_squares())
    with pytest.raises(InputError, match="do not match"):
        obey_clicks(np.zeros((5, 5), np.float32), cues, RegionPrompts(1, [Click(1, 1)]))
    with pytest.raises(InputError, match="outside"):
        obey_clicks(np.zeros((100, 140), np.float32), cues, RegionPrompts(1, [Click(300, 1)]))
    with pytest.raises(InputError, match="HxW"):
        ImageCues.of(np.zeros((2, 3, 4, 5), np.float32))


def test_engine_with_obedience_keeps_every_positive_click_inside():
    """Random positive clicks, even on the dark backdrop, always end inside the engine's mask,
    and negative clicks outside (the obedience the finishing guarantees)."""
    from napari_hitl.interactive.engine import get_engine

    engine = get_engine("clicknet", obey=True, snap=1.0, refocus=True)
    img = (np.stack([_two_squares()] * 3, axis=-1) * 255).astype(np.uint8)
    engine.prepare(img)
    rng = np.random.default_rng(3)
    prev = None
    region = RegionPrompts(1, [Click(40, 40)])
    for _ in range(6):
        logits = engine.predict(region, prev_mask=prev)
        assert logits.dtype == np.float32 and logits.shape == img.shape[:2]
        prev = logits > 0
        for c in region.clicks:
            assert prev[int(round(c.y)), int(round(c.x))] == c.positive, c
        y, x = rng.integers(0, 100), rng.integers(0, 140)
        region.clicks.append(Click(float(y), float(x), positive=bool(rng.integers(0, 2)) or not prev.any()))


def test_sweep_removes_the_false_part_around_an_obeyed_negative_click():
    """The network cut only a hole around the negative click: sweeping removes the whole false
    square it lands on (separated from the true one by an edge), not just the hole."""
    img = _two_squares()
    cues = ImageCues.of(img)
    logits = np.full(img.shape, -10.0, np.float32)
    logits[20:60, 20:120] = 8.0  # true square and a confident false one, joined
    logits[35:46, 95:106] = -4.0  # the hole around the negative click
    region = RegionPrompts(1, [Click(40, 40), Click(40, 100, positive=False)])
    assert obey_clicks(logits.copy(), cues, region) == 0  # nothing violated: plain obedience keeps it
    assert obey_clicks(logits, cues, region, sweep=True, reach=8) == 0
    mask = logits > 0
    assert mask[20:60, 80:120].mean() < 0.05, mask[20:60, 80:120].mean()
    assert mask[20:60, 20:60].mean() > 0.97 and mask[22:58, 22:58].all()  # the edge pixels may go either way


def test_engine_reuses_the_encoding_of_a_crop_it_has_seen():
    """Full-image mode revisits each region's crop: the encoder runs once per crop per image."""
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.prompts import ExtremePoints

    engine = get_engine("clicknet")
    img = (np.stack([_two_squares()] * 3, axis=-1) * 255).astype(np.uint8)
    engine.prepare(img)
    calls = []
    encode = engine.net.encode
    engine.net.encode = lambda x: calls.append(1) or encode(x)
    a = RegionPrompts(1, extreme=ExtremePoints(np.array([[40, 20], [40, 59], [20, 40], [59, 40]], float)))
    b = RegionPrompts(2, extreme=ExtremePoints(np.array([[40, 80], [40, 119], [20, 100], [59, 100]], float)))
    first = [engine.predict(r, others=[a, b]) for r in (a, b)]
    again = [engine.predict(r, others=[a, b]) for r in (a, b)]
    assert len(calls) == 2, calls
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    engine.prepare(img)  # a new image forgets them
    engine.predict(a)
    assert len(calls) == 4  # the whole-image crop of prepare, then a's



def test_fast_snap_stays_close_to_the_exact_filter():
    """The subsampled (fast) guided filter moves the boundary where the exact one does."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    disk = (yy - 150) ** 2 + (xx - 140) ** 2 <= 90 ** 2
    img = np.where(disk, 0.75, 0.25).astype(np.float32) + rng.normal(0, 0.03, (300, 300)).astype(np.float32)
    cues = ImageCues.of(np.clip(img, 0, 1))
    # a blurred answer whose boundary sits 6 px outside the disk's edge
    dist = np.sqrt((yy - 150) ** 2 + (xx - 140) ** 2).astype(np.float32)
    base = ((96 - dist) * 0.4).astype(np.float32)
    exact, fast = base.copy(), base.copy()
    snap_to_edges(exact, cues, radius=12, subsample=1)
    snap_to_edges(fast, cues, radius=12)  # default: coefficients on a 3x coarser grid
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(exact > 0, disk) > 0.97 and iou(fast > 0, disk) >= iou(exact > 0, disk) - 0.01
    assert iou(base > 0, disk) < 0.9  # the snap is what fixed it
