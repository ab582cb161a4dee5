"""One background queue for every model call (prepare, predict, train, rank, export).

Jobs run one at a time on a napari ``thread_worker`` so the UI never waits on a model.
Interactive jobs (a click's prediction) jump ahead of background jobs, and a running
background job that is *preemptible* (training, predicting all images) pauses between steps
when one is waiting, then resumes. Jobs on one *channel* supersede each other: a queued job
that a newer one on its channel replaced is skipped, and a result that arrives after a newer
job was submitted is dropped, never painted over a newer one. Errors become napari
notifications.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

from napari_hitl.app.jobs import drive
from napari_hitl.errors import HitlError

log = logging.getLogger(__name__)

#: priority of interactive jobs (lower runs first) and of background jobs
INTERACTIVE, BACKGROUND = 0, 1
#: seconds a worker thread waits for work before it ends (the next submit starts another)
IDLE_EXIT_S = 5.0


@dataclass(eq=False)
class Job:
    """A unit of model work: ``fn(ctx)`` runs on the worker, ``on_done(result)`` on the UI thread.

    ``fn`` may return a generator (a job of :mod:`napari_hitl.app.jobs`): the worker then runs it
    step by step, reports what it yields as progress and closes it when the job should stop."""

    kind: str
    fn: Callable[[JobContext], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[..., None] | None = None
    channel: str | None = None
    seq: int = 0
    priority: int = BACKGROUND
    preemptible: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    answered: float | None = None  # when fn returned (perf_counter), for latency figures

    def cancel(self) -> None:
        """Ask the job to stop at its next check (it then reports nothing)."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class JobContext:
    """What a running job sees: ``should_stop()`` (cancelled or preempted) and ``progress(...)``."""

    def __init__(self, queue_: ModelQueue, job: Job):
        self._queue = queue_
        self.job = job
        self.preempted = False

    def should_stop(self) -> bool:
        if self.job.cancelled:
            return True
        if self.job.preemptible and self._queue.interactive_waiting():
            self.preempted = True
            return True
        return False

    def progress(self, *args) -> None:
        """Report progress; ``job.on_progress(*args)`` runs on the UI thread."""
        if self.job.on_progress is not None:
            self._queue._bridge.progress.emit((self.job, args))


class _Bridge(QObject):
    """Carries progress from the worker thread to the UI thread (queued signal)."""

    progress = Signal(object)


class ModelQueue(QObject):
    """The dock's single job queue. ``submit`` from the UI thread; results come back on it."""

    #: emitted with (job, result) after ``on_done`` ran
    finished = Signal(object)
    #: emitted with the job whose result was dropped as stale
    dropped = Signal(object)
    #: emitted with (job, error) after an error was reported
    failed = Signal(object)
    #: emitted with True when work starts and False when the queue runs dry
    busy_changed = Signal(bool)

    def __init__(self, parent=None, autostart: bool = True):
        super().__init__(parent)
        self.autostart = autostart
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._seq = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._waiting_interactive = 0
        self._outstanding = 0
        self._worker = None
        self._alive = False  # a worker thread is looping (it ends after IDLE_EXIT_S with nothing to do)
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self.running: Job | None = None
        self.delivering: Job | None = None  # the job whose on_done runs now (UI thread)
        self.n_dropped = 0

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: Callable[[JobContext], Any], on_done=None, *, channel: str | None = None,
               interactive: bool = False, preemptible: bool = False, on_error=None, on_progress=None) -> Job:
        """Queue ``fn(ctx)``; a job on ``channel`` supersedes the earlier ones on it."""
        job = Job(kind, fn, on_done, on_error, on_progress, channel, next(self._seq),
                  INTERACTIVE if interactive else BACKGROUND, preemptible)
        if channel is not None:
            self._latest[channel] = job.seq
        with self._lock:
            if job.priority == INTERACTIVE:
                self._waiting_interactive += 1
            self._outstanding += 1
        with self._lock:
            self._q.put((job.priority, next(self._order), job))
        if self._outstanding == 1:
            self.busy_changed.emit(True)
        if self.autostart:
            self.start()
        return job

    def latest(self, channel: str) -> int:
        """Sequence number of the newest job submitted on ``channel`` (0 if none)."""
        return self._latest.get(channel, 0)

    def is_stale(self, job: Job) -> bool:
        return job.channel is not None and job.seq < self._latest.get(job.channel, 0)

    def interactive_waiting(self) -> bool:
        with self._lock:
            return self._waiting_interactive > 0

    @property
    def busy(self) -> bool:
        return self._outstanding > 0

    def cancel(self, kind: str | None = None) -> None:
        """Cancel the running and queued jobs (of ``kind``, or all)."""
        with self._q.mutex:
            jobs = [item[2] for item in self._q.queue if item[2] is not None]
        if self.running is not None:
            jobs.append(self.running)
        for job in jobs:
            if kind is None or job.kind == kind:
                job.cancel()

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        """Start the worker thread unless one is looping (it ends by itself when idle)."""
        with self._lock:
            if self._alive:
                return
            self._alive = True
        self._worker = create_worker(self._loop, _start_thread=False)
        self._worker.yielded.connect(self._on_yielded)
        self._worker.start()

    def stop(self) -> None:
        """Cancel everything and let the worker thread end."""
        self.cancel()
        if self._worker is not None and self._alive:
            self._q.put((-1, next(self._order), None))
            self._worker.quit()
            self._worker = None

    def _take(self, job: Job) -> None:
        with self._lock:
            if job.priority == INTERACTIVE:
                self._waiting_interactive -= 1

    def _loop(self):
        while True:
            try:
                _, _, job = self._q.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # submit() holds the lock too: no job can slip in unseen
                    if self._q.empty():
                        self._alive = False
                        return
                continue
            if job is None:
                with self._lock:
                    self._alive = False
                return
            self._take(job)
            if job.cancelled or self.is_stale(job):
                yield (job, None, None, True)
                continue
            self.running = job
            ctx = JobContext(self, job)
            result, error = None, None
            try:
                result = job.fn(ctx)
                if inspect.isgenerator(result):  # a generator job: progress per step, stopped by closing it
                    result = drive(result, ctx.should_stop, ctx.progress)
            except BaseException as err:  # noqa: BLE001 - every failure is reported to the person
                error = err
                error.hitl_traceback = traceback.format_exc()
            finally:
                self.running = None
            job.answered = time.perf_counter()
            if ctx.preempted and error is None and not job.cancelled:
                with self._lock:  # resume after the interactive work, ahead of later background jobs
                    if job.priority == INTERACTIVE:
                        self._waiting_interactive += 1
                self._q.put((job.priority, -next(self._order), job))
                continue
            yield (job, result, error, job.cancelled)

    # ------------------------------------------------------------------ UI thread
    def _on_yielded(self, item) -> None:
        job, result, error, skipped = item
        try:
            if not skipped:
                self.deliver(job, result, error)
        finally:
            self._outstanding = max(0, self._outstanding - 1)
            if self._outstanding == 0:
                self.busy_changed.emit(False)

    def deliver(self, job: Job, result: Any, error: BaseException | None = None) -> bool:
        """Hand a finished job's result to its ``on_done`` unless a newer job superseded it.

        Returns True if the result was used. Errors are shown as notifications.
        """
        if error is not None:
            report_error(job.kind, error)
            if job.on_error is not None:
                job.on_error(error)
            self.failed.emit((job, error))
            return False
        if self.is_stale(job):
            self.n_dropped += 1
            self.dropped.emit(job)
            return False
        self.delivering = job
        try:
            if job.on_done is not None:
                job.on_done(result)
        except Exception as err:  # noqa: BLE001 - a failing UI update is still reported, not raised into Qt
            report_error(job.kind, err)
            self.failed.emit((job, err))
            return False
        finally:
            self.delivering = None
        self.finished.emit((job, result))
        return True

    def _on_progress(self, item) -> None:
        job, args = item
        if job.on_progress is not None and not job.cancelled:
            job.on_progress(*args)


def report_error(what: str, error: BaseException) -> None:
    """Show ``error`` as a napari notification (a user-fixable HitlError as its message only)."""
    if isinstance(error, HitlError):
        show_error(str(error))
        return
    log.error("napari-hitl %s failed:\n%s", what, getattr(error, "hitl_traceback", "") or repr(error))
    show_error(f"napari-hitl: {what} failed: {type(error).__name__}: {error}")
