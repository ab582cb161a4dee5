"""SlideTools.accept without a viewer: what the pending layer shows over an overlap is what
Accept saves there; the saving runs on the dock's worker, and the regions being saved take no
prompt and keep their prompts until they are saved."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("qtpy")

from napari_hitl.interactive.engine import Window  # noqa: E402
from napari_hitl.prompts import Click, RegionPrompts  # noqa: E402

from test_app_slide import slide_session  # noqa: E402,F401


@pytest.fixture
def slide_tools(slide_session, qtbot):
    """SlideTools on the slide with the dock's worker queue and napari's viewer model (no window)."""
    from napari.components import ViewerModel

    from napari_hitl.napari._slide import SlideTools
    from napari_hitl.napari._worker import ModelQueue

    queue, viewer = ModelQueue(), ViewerModel()
    tools = SlideTools(viewer, queue, None)
    # the saved objects' layer (the dock's reads the project's chunks; refreshing is all the tool does with it)
    saved = viewer.add_labels(np.zeros((8, 8), np.uint32), name="slide")
    tools.session, tools.name, tools.layer = slide_session, "slide", saved
    tools.image = slide_session.project.open_image("slide")
    yield tools, queue
    queue.stop()
    qtbot.waitUntil(lambda: not queue._alive, timeout=60_000)
    tools.image.close()


def test_accept_saves_over_an_overlap_the_region_the_pending_layer_shows(slide_session, slide_tools, qtbot):
    from napari_hitl.napari._slide import SlideRegion

    s, p = slide_session, slide_session.project
    tools, queue = slide_tools
    a, b = s.reserve_id("slide"), s.reserve_id("slide")
    first = SlideRegion(a, RegionPrompts(1, [Click(120.0, 120.0, True)]), Window(np.ones((100, 100), bool), 100, 100))
    second = SlideRegion(b, RegionPrompts(1, [Click(180.0, 180.0, True)]), Window(np.ones((100, 100), bool), 150, 150))
    tools.regions = [first, second]  # the second one was prompted last
    tools.show()
    y0, x0 = (int(v) for v in tools.pending.translate)
    shown = np.asarray(tools.pending.data)[160 - y0, 160 - x0]  # a pixel both answers hold
    assert tools.accept() == 2
    qtbot.waitUntil(lambda: not queue.busy, timeout=60_000)
    assert not tools.regions and not tools.saving
    ids, _, _ = p.read_window("slide", 100, 100, 250, 250)
    assert ids[160 - 100, 160 - 100] == shown
    assert (ids == a).any() and (ids == b).any()


def test_accept_saves_on_the_worker_and_the_regions_being_saved_take_no_prompt(slide_session, slide_tools, qtbot,
                                                                               monkeypatch):
    """The chunks are written on the worker thread, never the UI thread; while they are, a
    prompt on a region being saved is refused, undo keeps its prompts, Reset keeps it and a
    second Accept does not save it again; once saved it leaves the pending layer."""
    from napari_hitl.errors import InputError
    from napari_hitl.napari._slide import SlideRegion

    s, p = slide_session, slide_session.project
    tools, queue = slide_tools
    gate, threads, real = threading.Event(), [], s.save_region

    def slow_save(*args, **kw):
        threads.append(threading.current_thread())
        assert gate.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(s, "save_region", slow_save)
    heard = []
    s.on("committed", lambda name, counts: heard.append((name, threading.current_thread())))
    a = s.reserve_id("slide")
    r = SlideRegion(a, RegionPrompts(1, [Click(150.0, 150.0, True)]), Window(np.ones((100, 100), bool), 100, 100))
    tools.regions, tools.history = [r], [("click", r)]
    tools.show()
    saved = []
    tools.saved.connect(saved.append)
    assert tools.accept() == 1  # returns at once: the save waits at the gate on the worker
    assert tools.saving == [r] and r in tools.regions
    with pytest.raises(InputError, match=f"Object {a} is being saved"):
        tools.click(150.0, 150.0, True)  # on the region being saved
    tools.undo()
    assert r.prompts.clicks and tools.history  # its prompt stays
    tools.reset()
    assert tools.regions == [r]
    assert tools.accept() == 0  # nothing else to save; it is not saved twice
    assert not p.objects("slide")
    gate.set()
    qtbot.waitUntil(lambda: not queue.busy, timeout=60_000)
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert heard == [("slide", threading.main_thread())]  # listeners hear of it on the UI thread
    (obj,) = p.objects("slide")
    assert obj["id"] == a and obj["area"] == 100 * 100
    assert not tools.regions and not tools.saving and not tools.history and not tools.pending.visible and not tools.pending.data.any()
    assert len(saved) == 1 and saved[0].human == 100 * 100


def test_a_failed_save_keeps_the_regions_not_saved_pending(slide_session, slide_tools, qtbot, monkeypatch):
    from napari_hitl.errors import CommitError
    from napari_hitl.napari._slide import SlideRegion

    s, p = slide_session, slide_session.project
    tools, queue = slide_tools
    real, n = s.save_region, [0]

    def second_fails(*args, **kw):
        n[0] += 1
        if n[0] == 2:
            raise CommitError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(s, "save_region", second_fails)
    monkeypatch.setattr("napari_hitl.napari._worker.show_error", lambda *a: None)
    a, b = s.reserve_id("slide"), s.reserve_id("slide")
    first = SlideRegion(a, RegionPrompts(1, [Click(120.0, 120.0, True)]), Window(np.ones((50, 50), bool), 100, 100))
    second = SlideRegion(b, RegionPrompts(1, [Click(320.0, 320.0, True)]), Window(np.ones((50, 50), bool), 300, 300))
    tools.regions = [first, second]  # saved newest first: second, then first (which fails)
    status = []
    tools.status.connect(status.append)
    tools.accept()
    qtbot.waitUntil(lambda: not queue.busy, timeout=60_000)
    assert [o["id"] for o in p.objects("slide")] == [b]
    assert tools.regions == [first] and not tools.saving  # not saved: still pending, can be accepted again
    assert "1 region(s) of slide not saved" in status[-1]
    monkeypatch.setattr(s, "save_region", real)
    tools.accept()
    qtbot.waitUntil(lambda: not queue.busy, timeout=60_000)
    assert sorted(o["id"] for o in p.objects("slide")) == [a, b] and not tools.regions


def test_a_save_that_ends_after_an_ordinary_image_is_shown_is_still_heard(slide_session, slide_tools, qtbot,
                                                                          monkeypatch):
    """Accept, then at once another image that is not a slide (the dock detaches the slide tool):
    the save still counts as an answer and the dock's listeners hear of it."""
    from napari_hitl.napari._slide import SlideRegion

    s = slide_session
    tools, queue = slide_tools
    gate, real = threading.Event(), s.save_region

    def slow_save(*args, **kw):
        assert gate.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(s, "save_region", slow_save)
    heard = []
    s.on("committed", lambda name, counts: heard.append(name))
    before = s.answers_since_training
    a = s.reserve_id("slide")
    tools.regions = [SlideRegion(a, RegionPrompts(1, [Click(120.0, 120.0, True)]),
                                 Window(np.ones((50, 50), bool), 100, 100))]
    assert tools.accept() == 1
    image = tools.image
    tools.layer = None  # (the fixture never connected it)
    tools.detach()  # show_image of an ordinary image: the slide tool is not attached again
    tools.image = image  # (the fixture closes it)
    gate.set()
    qtbot.waitUntil(lambda: not queue.busy, timeout=60_000)
    assert heard == ["slide"] and s.answers_since_training == before + 1


def test_the_pending_layer_keeps_the_persons_eye_toggle_while_it_holds_regions(slide_session, slide_tools):
    """The pending layer is kept, emptied and hidden, once no region is pending; while regions are
    pending a new answer does not turn it back on after the person hid it, and hidden by the
    person it is still emptied (nothing stale when shown again); the next regions show it."""
    from napari_hitl.napari._slide import SlideRegion

    s = slide_session
    tools, _ = slide_tools

    def region(y):
        return SlideRegion(s.reserve_id("slide"), RegionPrompts(1, [Click(y + 20.0, 120.0, True)]),
                           Window(np.ones((40, 40), bool), y, 100))

    tools.regions = [region(100)]
    tools.show()
    assert tools.pending.visible and tools.pending.data.any()
    tools.pending.visible = False  # the person hides it, to see the slide under it
    tools.regions.append(region(200))
    tools.show()
    assert not tools.pending.visible
    tools.regions = []  # accepted (or undone)
    tools.show()
    assert not tools.pending.data.any() and not tools.pending.visible
    tools.regions = [region(300)]
    tools.show()
    assert tools.pending.visible and tools.pending.data.any()
