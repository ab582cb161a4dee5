"""Stopping a batch run that predicts a slide (app/batch.py) on a real Dask cluster: a run paused
or cancelled from the dock returns at once and the next run waits for the slide task it left;
closing the session under a running batch neither blocks the caller nor leaves a task writing
the cache after its stop sign is gone; a failure of the wait itself is not swallowed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.app.session import Session
from napari_hitl.app.slides import read_progress
from napari_hitl.errors import ProjectError
from napari_hitl.project import Project

from test_slide_rank import SIZES, _slide

pytest.importorskip("torch")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    from napari_hitl.app.batch import local_cluster

    with local_cluster(1) as c:
        yield c


@pytest.fixture
def slide_project(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_PIXELS", 300 * 300)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 256)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "slide.tif", (600, 700))  # 6 x 7 tiles of 128
    return Project.create(tmp_path / "p", imgs, classes=["background", "cell", "nucleus"])


def _folder(session):
    from napari_hitl.app.batch import model_bytes

    return session.project.cache_dir / "predictions" / model_bytes(session.model)[1] / "slide.slide"


def _signs(session):
    return list((session.project.cache_dir / "predictions").glob("*/.stop-*"))


class _Ctx:
    """What the dock's queue gives a job: should_stop (cancel / a click waiting) and progress."""

    def __init__(self):
        self.stop = threading.Event()

    def should_stop(self):
        return self.stop.is_set()

    def progress(self, *args):
        pass


def _small_slide_sizes(monkeypatch):
    """Session.batch_job with the small slide sizes of these tests."""
    from napari_hitl.app import batch

    real = batch.predict_project
    monkeypatch.setattr(batch, "predict_project", lambda *a, **k: real(*a, slide_sizes=SIZES, poll=0.05, **k))


def _run_in_thread(fn):
    out = {}

    def run():
        try:
            out["report"] = fn()
        except BaseException as err:  # noqa: BLE001 - the test reports it
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _until(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_closing_the_session_under_a_running_slide_batch_neither_blocks_nor_orphans_the_task(
        slide_project, cluster, monkeypatch):
    _small_slide_sizes(monkeypatch)
    session = Session(slide_project)
    client = distributed.Client(cluster, set_as_default=False)
    session._dask = (client, None)  # a cluster that outlives the session, as one at an address does
    folder = _folder(session)
    ctx = _Ctx()
    t, out = _run_in_thread(lambda: session.batch_job()(ctx))
    _until(lambda: read_progress(folder) >= 3)
    ctx.stop.set()  # the dock: queue.cancel(), then session.close() on the UI thread
    t0 = time.perf_counter()
    session.close()
    closing = time.perf_counter() - t0
    t.join(30)
    assert not t.is_alive()
    assert "error" not in out, "".join(__import__("traceback").format_exception(out["error"]))  # no ClosedClientError
    assert closing < 30.0  # not a speed target: far below the 120 s a wait for the slide task would take
    # the slide task, still on the cluster (closing the client cannot stop a running task), sees the
    # stop sign, which stays: it stops within a tile instead of writing the cache to the end
    assert _signs(session)
    last, still = -1, time.monotonic()
    while time.monotonic() - still < 1.5:  # until the tile count rests
        assert time.monotonic() - still < 60
        now = read_progress(folder)
        if now != last:
            last, still = now, time.monotonic()
        time.sleep(0.05)
    assert last < 6 * 7, "the task ran to the end: the stop sign was taken away under it"


def test_a_paused_run_returns_without_waiting_and_the_next_run_waits_for_its_slide_task(slide_project, cluster):
    from napari_hitl.app.batch import predict_project

    with Session(slide_project) as session, distributed.Client(cluster, set_as_default=False) as client:
        folder = _folder(session)
        part = predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=0,
                               should_stop=lambda: read_progress(folder) >= 3)
        assert part.cancelled and not part.predicted and not part.failed
        # the slide task was left to its stop sign (it ends within a tile), not waited for here
        assert set(session.stopping_slides) <= {"slide"}
        # the dock's next run (stop_wait=0 too) waits for that task, then predicts the slide
        rest = predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=0)
        assert not rest.failed and rest.predicted == ["slide"]
        assert not session.stopping_slides and not _signs(session)
        assert rest.slides["slide"]["windows"] == 9


def test_a_failure_of_the_wait_itself_is_an_error_not_a_silent_poll(slide_project, cluster, monkeypatch):
    """wait() raises TimeoutError (nothing finished) or CancelledError (a task lost); anything else
    (here a broken connection, injected) ends the run with a clear error, tasks stopped."""
    from napari_hitl.app.batch import predict_project

    real_wait = distributed.wait
    calls = []

    def wait(*a, **k):
        if k.get("return_when") != "FIRST_COMPLETED":  # not the polling wait (the slide's stop wait)
            return real_wait(*a, **k)
        calls.append(1)
        if len(calls) == 3:
            raise OSError("connection to the scheduler lost")
        return real_wait(*a, **k)

    monkeypatch.setattr(distributed, "wait", wait)
    with Session(slide_project) as session, distributed.Client(cluster, set_as_default=False) as client:
        with pytest.raises(ProjectError, match="waiting for the prediction tasks.*connection to the scheduler lost"):
            predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=30)
        assert not session.project.results(_folder(session).parent.name)
    assert len(calls) == 3  # the run ended at the failure: no poll after it


def test_the_dock_batch_reads_the_window_scores_on_its_thread_and_predicted_reads_no_file(
        slide_project, cluster, monkeypatch):
    """Session.batch_job (the dock's job, on its worker) reads the results and every slide's window
    scores (a file per row of windows: 40 for a 40000 px slide) after the run; predicted(report)
    and the ranking, on the UI thread, then read none."""
    from napari_hitl.app import slides

    _small_slide_sizes(monkeypatch)
    with Session(slide_project) as session:
        session._dask = (distributed.Client(cluster, set_as_default=False), None)
        report = session.batch_job()(_Ctx())
        assert report.predicted == ["slide"] and len(report.windows) == 9
        read = []
        real_rows = slides._read_rows
        monkeypatch.setattr(slides, "_read_rows", lambda *a: (read.append(a), real_rows(*a))[1])
        monkeypatch.setattr(session.project, "results", lambda *a, **k: read.append(a) or {})
        session.predicted(report)
        rows = session.rank("local consistency")
        assert not read
        assert len(rows) == 9 and {r.name for r in rows} == {"slide"}


def test_the_session_and_the_cli_get_their_client_from_one_helper_never_as_dask_default(tmp_path, monkeypatch):
    import inspect

    from napari_hitl import commands
    from napari_hitl.app import batch
    from napari_hitl.app import session as app_session

    made = []
    real = batch.connect
    monkeypatch.setattr(batch, "connect", lambda *a, **k: (made.append(a), real(*a, **k))[1])
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "a.tif", (40, 50))
    session = Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"]))
    client = session.client()
    cluster = session._dask[1]
    assert made and cluster is not None
    with pytest.raises(ValueError):
        distributed.default_client()  # set_as_default=False
    session.close()
    assert client.status == "closed" and cluster.status.name == "closed"
    for module in (app_session, commands):  # no second copy of the construction
        assert "Client(" not in inspect.getsource(module)


class _StoppingTask:
    """A slide task an earlier run (of another model) left stopping: it notes whether its stop sign
    was there each time the run looked at it while it still ran."""

    def __init__(self, client, sign, runs_for: int | None):
        self.client, self.sign, self.runs_for = client, sign, runs_for
        self.looked, self.sign_gone = 0, False
        self.status = "pending"

    def done(self):
        self.looked += 1
        running = self.runs_for is None or self.looked <= self.runs_for
        if running and not self.sign.exists():
            self.sign_gone = True  # a real task would now run to the end (or restart, with retries)
        return not running


@pytest.mark.parametrize("runs_for", [3, None])
def test_a_run_of_a_new_model_keeps_the_stop_sign_of_a_slide_task_an_earlier_model_left_stopping(
        tmp_path, monkeypatch, runs_for):
    """The dock's run returns at once on a cancel (stop_wait=0), leaving a slide task stopping with
    its stop sign in the old model's cache folder. A run after a training round (a new model)
    drops the old model's cache: it must not delete that sign while the task still runs (the task
    would predict the whole slide again, into a deleted folder). It waits for the task first; a
    task still running after the wait keeps its folder and sign."""
    from PIL import Image

    from napari_hitl.app import batch

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(imgs / "a.png")
    monkeypatch.setattr(batch, "STOPPING_WAIT", 0.3)

    def fake_wait(fs, timeout=None, return_when=None):
        if any(isinstance(f, _StoppingTask) for f in fs):
            time.sleep(timeout or 0)
            raise TimeoutError
        return real_wait(fs, timeout=timeout, return_when=return_when)

    real_wait = distributed.wait
    monkeypatch.setattr(distributed, "wait", fake_wait)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") \
            as cluster, distributed.Client(cluster, set_as_default=False) as client, \
            Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"])) as session:
        monkeypatch.setattr(client, "cancel", lambda fs, **k: None if isinstance(fs, _StoppingTask)
                            else type(client).cancel(client, fs, **k))
        old = session.project.cache_dir / "predictions" / "0123456789abcdef"
        (old / "slide.slide").mkdir(parents=True)
        sign = old / ".stop-1-1"
        sign.touch()
        task = _StoppingTask(client, sign, runs_for)
        session.stopping_slides["slide"] = (task, sign)
        report = batch.predict_project(session, client, names=[], poll=0.01, stop_wait=0)
        assert task.looked > 1 and not task.sign_gone
        if runs_for is None:  # still running after the wait: its sign and folder stay for it
            assert sign.exists() and (old / "slide.slide").is_dir() and "slide" in session.stopping_slides
        else:  # it ended: its sign and the old model's cache go
            assert not old.exists() and not session.stopping_slides
        assert not report.failed


def test_a_broken_connection_in_the_stop_wait_does_not_hide_the_runs_own_error(slide_project, cluster, monkeypatch):
    """The connection to the scheduler breaks: the polling wait fails (a ProjectError that says
    what to do) and so does the wait for the slide task to stop, in the run's cleanup; that
    second failure must not replace the first (the slide task is then left to its stop sign)."""
    from napari_hitl.app.batch import predict_project

    real_wait = distributed.wait
    calls = []

    def wait(*a, **k):
        calls.append(k.get("return_when"))
        if len(calls) >= 3:
            raise OSError("connection to the scheduler lost")
        return real_wait(*a, **k)

    monkeypatch.setattr(distributed, "wait", wait)
    with Session(slide_project) as session, distributed.Client(cluster, set_as_default=False) as client:
        with pytest.raises(ProjectError, match="waiting for the prediction tasks.*connection to the scheduler lost"):
            predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=30)
        assert "ALL_COMPLETED" in calls  # the stop wait ran, and failed too
        monkeypatch.setattr(distributed, "wait", real_wait)  # the connection is back
        assert set(session.stopping_slides) <= {"slide"}  # left to its stop sign, for the next run
        rest = predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=0)
        assert rest.predicted == ["slide"] and not rest.failed


def test_a_failure_of_the_wait_for_a_stopping_slide_task_is_a_project_error(tmp_path, monkeypatch):
    """As the polling wait's: a broken connection while the run waits for the slide tasks an
    earlier run left stopping ends it with a ProjectError saying what to do, not a bare OSError."""
    from PIL import Image

    from napari_hitl.app import batch

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(imgs / "a.png")

    def fake_wait(fs, timeout=None, return_when=None):
        if any(isinstance(f, _StoppingTask) for f in fs):
            raise OSError("connection to the scheduler lost")
        return real_wait(fs, timeout=timeout, return_when=return_when)

    real_wait = distributed.wait
    monkeypatch.setattr(distributed, "wait", fake_wait)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") \
            as cluster, distributed.Client(cluster, set_as_default=False) as client, \
            Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"])) as session:
        sign = session.project.cache_dir / "predictions" / ".stop-1-1"
        session.stopping_slides["slide"] = (_StoppingTask(client, sign, None), sign)
        with pytest.raises(ProjectError, match="slide tasks an earlier run left stopping.*connection"):
            batch.predict_project(session, client, poll=0.01, stop_wait=0)


def test_a_damaged_window_file_does_not_fail_the_dock_batch_after_its_images_are_saved(tmp_path, monkeypatch):
    """Session.batch_job reads the slides' window scores after the run (for the UI thread): a
    damaged window file must not turn the whole finished run into a failure (its new results then
    unused); the report comes back without them, and ranking reads them again and names the file,
    as it did before the job read them."""
    from PIL import Image

    from napari_hitl.app import slides
    from napari_hitl.errors import CorruptFileError

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(imgs / "a.png")

    def damaged(*a, **k):
        raise CorruptFileError("the window scores of slide 's' in row-0.npz are damaged")

    monkeypatch.setattr(slides, "window_results", damaged)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") \
            as cluster, Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"])) as session:
        session._dask = (distributed.Client(cluster, set_as_default=False), None)
        report = session.batch_job()(_Ctx())
        assert report.predicted == ["a"] and report.results and report.windows is None
        session.predicted(report)
        assert "a" in session.predictions
        with pytest.raises(CorruptFileError, match="damaged"):
            session.predictions.windows()


def test_a_paused_runs_stop_sign_goes_once_its_slide_task_ends_without_a_next_run(slide_project, cluster):
    """The dock's run returns at once (stop_wait=0) and leaves its slide task stopping: the sign
    stays while the task may read it and goes when it ends, though no later run comes."""
    from napari_hitl.app.batch import predict_project

    with Session(slide_project) as session, distributed.Client(cluster, set_as_default=False) as client:
        folder = _folder(session)
        part = predict_project(session, client, slide_sizes=SIZES, poll=0.05, stop_wait=0,
                               should_stop=lambda: read_progress(folder) >= 3)
        assert part.cancelled
        for task, _ in list(session.stopping_slides.values()):
            _until(task.done)
            assert task.status == "finished"  # ran to its end: not cancelled with the run's weights
        _until(lambda: not _signs(session), 30)


def test_a_run_deletes_stale_stop_signs_and_keeps_those_a_task_may_still_read(tmp_path):
    """Signs left by a process that no longer runs, and this process's own that nothing holds,
    go when a run starts; a sign of another running process, or of a live run here, stays. A
    session closing its local cluster releases its signs (the tasks ended with the cluster)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from napari_hitl.app import batch

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(imgs / "a.png")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
        session = Session(Project.create(tmp_path / "p", imgs, classes=["background", "cell"]))
        client = distributed.Client(cluster, set_as_default=False)
        session._dask = (client, cluster)  # a local cluster of the session's
        root = session.project.cache_dir / "predictions"
        here = root / batch.model_bytes(session.model)[1]
        here.mkdir(parents=True)
        killed, mine, other, live = (here / f".stop-{dead.pid}-1", here / f".stop-{os.getpid()}-2",
                                     here / f".stop-{alive.pid}-3", here / f".stop-{os.getpid()}-4")
        for sign in (killed, mine, other, live):
            sign.touch()
        batch._LIVE_SIGNS.add(live)  # as a run of this process, still going, holds its sign
        report = batch.predict_project(session, client, poll=0.01)
        assert report.predicted == ["a"]
        assert not killed.exists() and not mine.exists()
        assert other.exists() and live.exists()
        assert sorted(p.name for p in _signs(session)) == sorted([other.name, live.name])  # the run's own went
        session.close()  # with its local cluster: this process's signs of its cache go
        assert not live.exists() and live not in batch._LIVE_SIGNS and other.exists()
    finally:
        alive.kill()
        alive.wait()
