"""The dock's worker queue: stale results are dropped, clicks preempt background work, errors
become notifications; and the prompt session's bookkeeping (no viewer needed there)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_hitl.errors import InputError
from napari_hitl.napari._session import PromptSession, extreme_from_clicks, predict_regions
from napari_hitl.napari._worker import ModelQueue


def test_stale_results_are_dropped_when_delivered_out_of_order(qtbot):
    q = ModelQueue(autostart=False)
    got = []
    old = q.submit("predict", lambda ctx: "old", got.append, channel="predict", interactive=True)
    new = q.submit("predict", lambda ctx: "new", got.append, channel="predict", interactive=True)
    other = q.submit("rank", lambda ctx: "rank", got.append, channel="rank")
    assert q.deliver(new, "new") is True
    assert q.deliver(old, "old") is False  # arrives after a newer one: never painted over it
    assert q.deliver(other, "rank") is True  # other channels are independent
    assert got == ["new", "rank"] and q.n_dropped == 1


def test_queue_skips_superseded_jobs_and_runs_clicks_before_background_work(qtbot):
    q = ModelQueue()
    ran, got = [], []
    gate = threading.Event()

    def background(ctx):
        ran.append("bg-start")
        steps = 0
        while steps < 40:
            if ctx.should_stop():
                ran.append("bg-paused")
                return None
            gate.wait(0.01)
            steps += 1
        ran.append("bg-done")
        return "bg"

    def click(tag):
        def fn(ctx):
            ran.append(tag)
            return tag
        return fn

    q.submit("train", background, got.append, preemptible=True)
    qtbot.waitUntil(lambda: "bg-start" in ran, timeout=5000)
    for tag in ("c1", "c2", "c3"):  # a burst of clicks while training runs
        q.submit("predict", click(tag), got.append, channel="predict", interactive=True)
    qtbot.waitUntil(lambda: not q.busy, timeout=10_000)
    q.stop()
    # training paused for the clicks, only the newest click ran, then training resumed and finished
    assert "bg-paused" in ran and ran.index("bg-paused") < ran.index("c3")
    assert "c1" not in ran or "c1" not in got
    assert got[0] == "c3" and got[-1] == "bg" and "c2" not in got


def test_worker_errors_become_notifications(qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_hitl.napari._worker.show_error", shown.append)
    q = ModelQueue()
    failed = []

    def boom(ctx):
        raise RuntimeError("engine exploded")

    q.submit("predict", boom, on_error=failed.append, interactive=True)
    q.submit("rank", lambda ctx: (_ for _ in ()).throw(InputError("no image named 'x'")))
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=5000)
    q.stop()
    assert "predict failed" in shown[0] and "engine exploded" in shown[0]
    assert shown[1] == "no image named 'x'"  # a user-fixable error: its message alone
    assert isinstance(failed[0], RuntimeError)


def test_cancel_stops_a_running_job_without_a_result(qtbot):
    q = ModelQueue()
    got, started = [], threading.Event()

    def long(ctx):
        started.set()
        while not ctx.should_stop():
            time.sleep(0.005)
        return "late"

    job = q.submit("train", long, got.append)
    qtbot.waitUntil(started.is_set, timeout=5000)
    q.cancel("train")
    qtbot.waitUntil(lambda: not q.busy, timeout=5000)
    q.stop()
    assert job.cancelled and got == []


def test_a_generator_job_reports_its_steps_pauses_for_a_click_and_goes_on(qtbot):
    q = ModelQueue()
    done, events, progress, started = [0], [], [], threading.Event()

    def job(ctx):  # a resumable generator job: what it did lives outside the generator
        def steps():
            while done[0] < 40:
                started.set()
                time.sleep(0.005)
                done[0] += 1
                yield done[0], 40
            return "trained"
        return steps()

    q.submit("train", job, events.append, preemptible=True, on_progress=lambda i, n: progress.append(i))
    qtbot.waitUntil(started.is_set, timeout=5000)
    q.submit("predict", lambda ctx: "click", events.append, interactive=True)
    qtbot.waitUntil(lambda: "trained" in events, timeout=10000)
    q.stop()
    assert events == ["click", "trained"]  # answered while the job was paused between steps
    assert done[0] == 40 and progress == sorted(progress) and progress[-1] == 40


# ---------------------------------------------------------------------- prompt session

def test_session_regions_undo_and_composite():
    base = np.zeros((20, 30), np.uint16)
    base[0, 0] = 2
    s = PromptSession(base)
    assert s.add_click(5, 5, False, 1) is None  # a negative click needs a region
    a = s.add_click(5, 5, True, 1)
    s.set_masks({a.id: np.pad(np.ones((4, 4), bool), ((3, 13), (3, 23)))})
    assert s.region_at(5, 5) is a and s.region_at(15, 25) is None
    assert s.add_click(15, 25, True, 1) is a  # same class, no "new region": extends the active region
    s.new_region = True
    b = s.add_click(15, 25, True, 1)
    assert b is not a and s.active == b.id
    assert s.add_click(5, 5, False, 1) is a  # a negative inside A's mask goes to A
    s.set_masks({b.id: np.zeros((20, 30), bool)})
    shown = s.composite()
    assert shown[5, 5] == a.oid and shown[0, 0] == 2 and a.oid not in (0, 2) and b.oid not in (0, 2, a.oid)
    assert s.object_classes() == {a.oid: 1, b.oid: 1}
    # a hand edit in the layer survives the next composite
    edited = shown.copy()
    edited[19, 0] = 7
    s.shown = shown
    s.absorb(edited)
    assert s.composite()[19, 0] == 7
    # undo in reverse order; a region losing its last positive prompt goes away
    assert s.undo() is a  # the negative click on A
    assert s.undo() is None and s.region(b.id) is None  # B had one click
    assert s.undo() is a and len(a.prompts.clicks) == 1
    assert s.undo() is None and s.regions == []
    assert s.undo() is None


def test_a_prompt_on_a_saved_object_corrects_that_object():
    base = np.zeros((20, 30), np.uint32)
    base[2:8, 2:8] = 4     # a saved cell (class 1)
    base[10:16, 10:16] = 9  # a saved object of class 2
    s = PromptSession(base, classes={4: 1, 9: 2})
    r = s.add_click(5, 5, True, 1)
    assert r.oid == 4 and r.mask.sum() == 36  # the object's own mask is the region's starting mask
    r.mask = np.zeros((20, 30), bool)
    r.mask[2:6, 2:6] = True  # the engine shrank it
    out = s.composite()
    assert (out[2:6, 2:6] == 4).all() and (out[6:8, 2:8] == 0).all() and (out[10:16, 10:16] == 9).all()
    neg = s.add_click(12, 12, False, 1)  # a negative click on an object of another class corrects it too
    assert neg.oid == 9 and neg.label == 2
    s.new_region = True
    fresh = s.add_click(18, 25, True, 1)  # a new region: a new object
    assert fresh.oid not in (4, 9) and s.object_classes()[fresh.oid] == 1
    assert s.undo() is None and s.region(fresh.id) is None
    assert s.undo() is None and s.region(neg.id) is None  # the correction is undone: object 9 as saved
    np.testing.assert_array_equal(s.composite()[10:16, 10:16], 9)


def test_extreme_points_in_any_order_and_scribble_start_decides_the_region():
    s = PromptSession(np.zeros((40, 40), np.uint16))
    for y, x in [(5, 20), (20, 35), (35, 20)]:
        assert s.add_extreme_point(y, x, 1) is None
    r = s.add_extreme_point(20, 4, 1)
    np.testing.assert_array_equal(r.prompts.extreme.points, [[20, 4], [20, 35], [5, 20], [35, 20]])
    assert s.history == [("extreme", r.id)]
    assert s.undo() is None and s.regions == []
    ex = extreme_from_clicks([(1, 1), (1, 1), (1, 1), (1, 1)])
    assert ex.box == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="outside"):
        s.add_click(50, 5, True, 1)
    a = s.add_click(10, 10, True, 1)
    s.set_masks({a.id: np.pad(np.ones((5, 5), bool), ((8, 27), (8, 27)))})
    s.new_region = True
    b = s.add_click(30, 30, True, 1)
    assert s.add_scribble([(10, 10), (20, 20), (30, 30)], True, 1) is a  # starts in A


class _FakeEngine:
    def __init__(self, logits):
        self.logits = logits

    def predict_all(self, regions, prev):
        return self.logits

    def predict(self, region, prev_mask=None, others=()):
        return self.logits[0]


def test_full_image_mode_gives_each_pixel_to_the_strongest_region():
    s = PromptSession(np.zeros((1, 4), np.uint16))
    a = s.add_click(0, 0, True, 1)
    s.new_region = True
    b = s.add_click(0, 3, True, 2)
    la = np.array([[3.0, 1.0, -1.0, -2.0]], np.float32)
    lb = np.array([[-3.0, 2.0, -0.5, 4.0]], np.float32)
    masks = predict_regions(_FakeEngine([la, lb]), s.snapshot(b), full_image=True)
    np.testing.assert_array_equal(masks[a.id], [[True, False, False, False]])
    np.testing.assert_array_equal(masks[b.id], [[False, True, False, True]])  # x=2: nobody (both < 0)
    alone = predict_regions(_FakeEngine([la]), s.snapshot(a), full_image=False)
    assert list(alone) == [a.id]


def test_an_idle_worker_thread_ends_and_the_next_job_starts_another(qtbot, monkeypatch):
    monkeypatch.setattr("napari_hitl.napari._worker.IDLE_EXIT_S", 0.05)
    q = ModelQueue()
    got = []
    q.submit("a", lambda ctx: 1, got.append)
    qtbot.waitUntil(lambda: got == [1] and not q._alive, timeout=5000)
    q.submit("b", lambda ctx: 2, got.append)
    qtbot.waitUntil(lambda: got == [1, 2], timeout=5000)
    q.stop()
