"""One open project and the work on it, shared by the dock and the command line (no Qt).

A :class:`Session` owns the project, the single lock its writers take, the model host (the
one checkpoint), the cache of predictions and the count of accepted answers since the last
training round. Its ``*_job`` methods return ``fn(ctx)`` callables for a worker:
predicting, suggesting and training return generators that yield progress and are stopped by
closing them (:func:`napari_hitl.app.jobs.drive` runs them); export and the time-lapse jobs
use ``ctx.should_stop()`` and ``ctx.progress(...)``. They read and write the project under
the lock and return plain results; the caller hands them back with :meth:`Session.predicted`
or :meth:`Session.trained` on its own thread. Listeners registered with :meth:`Session.on` hear
``committed(name, counts)``, ``predicted(predictions)`` and ``trained(figures)``.

On a large image (a slide, whose labels are read and committed by window) a region's answer
is saved with :meth:`Session.commit_region`: it takes only what :meth:`Session.claim` gives it
(never a person's pixels of another saved object), and a correction of a saved object starts
from :meth:`Session.object_seed` and replaces that object inside the answer's window.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from napari_hitl import instances as inst
from napari_hitl.active.pseudo import PseudoSettings
from napari_hitl.app.model_host import ModelHost
from napari_hitl.app.predictions import CachedPredictions
from napari_hitl.errors import InputError
from napari_hitl.project import Counts, Project

if TYPE_CHECKING:
    from napari_hitl.interactive.engine import Window

#: what a listener can hear (see the module docstring)
EVENTS = ("committed", "predicted", "trained")
#: label sources that count as answers towards auto-training (pseudo labels do not)
ANSWERS = ("human", "machine", "simulated")


#: object edits a person makes, journalled under these event names
EDITS = ("delete", "merge", "split")


#: object edits kept for undo, per session (older ones cannot be undone)
MAX_EDITS = 20

#: side of the window of a saved object's pixels that a correction on a large image starts from
#: (see :meth:`Session.object_seed`)
SEED_SIDE = 2048


@dataclass
class Edit:
    """One object edit, kept so it can be undone: the pixels it changed, what they held before
    (ids, classes of those ids, provenance) and the label file the edit saved."""

    name: str
    frame: int | None
    op: str
    pixels: np.ndarray         # flat indices of the changed pixels
    ids: np.ndarray            # their object ids before the edit
    provenance: np.ndarray     # their provenance before the edit
    classes: dict[int, int]    # the class of each id in ``ids``
    file: object               # the plane's label file right after the edit


class Session:
    """The open project, its lock, model, predictions and answer count (see the module docstring)."""

    def __init__(self, project: Project, scheduler: str | None = None):
        self.project = project
        self.lock = threading.RLock()
        self.model = ModelHost(project)
        self.predictions = CachedPredictions(project)  # image name -> one Prediction per frame
        self.scheduler = scheduler  # a Dask scheduler's address for batch work (None: a local cluster)
        self._dask: tuple | None = None  # (client, cluster or None), started on first batch work
        #: slide -> (future, stop sign) of a slide task a cancelled batch left stopping (app/batch.py)
        self.stopping_slides: dict = {}
        self.closed = False  # set by close(): a save that ends later tells no listener
        self.answers_since_training = 0
        self.edits: list[Edit] = []  # object edits, newest last, for undo
        self._listeners: dict[str, list[Callable]] = {e: [] for e in EVENTS}

    @classmethod
    def open(cls, path) -> Session:
        return cls(Project.open(path))

    def close(self, dask_in_background: bool = False) -> None:
        """Close the project (after a save running on a worker thread) and the Dask client and local
        cluster of the batch work; ``dask_in_background``: those on a thread of their own, for a
        caller on napari's UI thread (stopping a local cluster's processes takes 1-2 s)."""
        if self._dask is not None:
            from napari_hitl.app.batch import disconnect, release_signs

            client, cluster = self._dask
            self._dask = None
            cache_dir = self.project.cache_dir

            def close_dask() -> None:
                disconnect(client, cluster)
                if cluster is not None:  # a local cluster: its slide tasks ended with it, their stop
                    release_signs(cache_dir)  # signs go (one at an address may still read them)

            if dask_in_background:
                threading.Thread(target=close_dask, name="napari-hitl close dask", daemon=True).start()
            else:
                close_dask()
        with self.lock:  # a save running on a worker thread ends first
            self.project.close()
            self.closed = True

    def client(self):
        """The Dask client of the session's batch work: a local cluster of worker processes (one
        core left to the person) started on first use, or the cluster at ``scheduler``."""
        if self._dask is None:
            import os

            from napari_hitl.app.batch import connect

            self._dask = connect(self.scheduler, None if self.scheduler else max(1, (os.cpu_count() or 2) - 1))
        return self._dask[0]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.project.images]

    # ------------------------------------------------------------------ events
    def on(self, event: str, fn: Callable) -> None:
        """Call ``fn(*args)`` whenever ``event`` (one of EVENTS) happens."""
        self._listeners[event].append(fn)

    def _emit(self, event: str, *args) -> None:
        for fn in list(self._listeners[event]):
            fn(*args)

    # ------------------------------------------------------------------ labels
    def _committed(self, name: str, counts: Counts, source: str) -> Counts:
        """After a save: an answer counts towards auto-training; listeners hear of it."""
        if source in ANSWERS:
            self.answers_since_training += 1
        self._emit("committed", name, counts)
        return counts

    def commit(self, name: str, labels, *, source: str = "human", where=None, frame: int | None = None) -> Counts:
        """The one path a person's labels take to the project: saved at once under the lock; human
        and accepted (machine) labels count towards auto-training."""
        with self.lock:
            counts = self.project.commit_labels(name, labels, source=source, where=where, frame=frame)
        return self._committed(name, counts, source)

    def read_labels(self, name: str, frame: int | None = None):
        with self.lock:
            return self.project.read_labels(name, frame=frame)

    def read_instances(self, name: str, frame: int | None = None):
        with self.lock:
            return self.project.read_instances(name, frame=frame)

    def commit_instances(self, name: str, ids, classes: dict[int, int], *, source: str = "human", where=None,
                         frame: int | None = None, event: str = "commit", **detail) -> Counts:
        """A person's (or accepted machine) objects to the project, like :meth:`commit`;
        ``event`` and ``detail`` name it in the journal."""
        with self.lock:
            counts = self.project.commit_instances(name, ids, classes, source=source, where=where, frame=frame,
                                                   event=event, **detail)
        return self._committed(name, counts, source)

    def commit_window(self, name: str, ids, classes: dict[int, int], *, offset, source: str = "human", where=None,
                      event: str = "commit", **detail) -> Counts:
        """A window of a large image's objects to the project (only the chunks it covers are
        rewritten), like :meth:`commit_instances`."""
        with self.lock:
            counts = self.project.commit_window(name, ids, classes, offset=offset, source=source, where=where,
                                                event=event, **detail)
        return self._committed(name, counts, source)

    def reserve_id(self, name: str) -> int:
        """A new object id for ``name`` that no other object of it has had or will get."""
        with self.lock:
            return self.project.reserve_ids(name)

    # ------------------------------------------------------------------ regions on a large image
    def saved_object_at(self, name: str, y: float, x: float) -> tuple[int, int]:
        """``(id, class)`` of the saved object at pixel (y, x) of large image ``name``; (0, 0) where
        there is none (reads one pixel: the chunk under it)."""
        h, w = self.project.record(name).shape
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < h and 0 <= ix < w):
            return 0, 0
        ids, _, classes = self.project.read_window(name, iy, ix, iy + 1, ix + 1)
        oid = int(ids[0, 0])
        return (oid, int(classes[oid])) if oid else (0, 0)

    def object_seed(self, name: str, oid: int, near: tuple[float, float]) -> Window:
        """The saved pixels of object ``oid`` of large image ``name`` as a boolean window (the
        previous mask a correction of it starts from): over the object's box, at most
        :data:`SEED_SIDE` pixels a side around ``near`` (y, x) (a larger object is corrected
        there; its pixels further away stay as saved)."""
        from napari_hitl.interactive.engine import Window

        row = self.project.object(name, oid)
        if row is None:
            raise InputError(f"{name!r} has no saved object {oid}")
        h, w = self.project.record(name).shape
        half = SEED_SIDE // 2
        cy, cx = (int(round(v)) for v in near)
        y0, x0 = max(row["y0"], cy - half, 0), max(row["x0"], cx - half, 0)
        y1, x1 = min(row["y1"], cy + half, h), min(row["x1"], cx + half, w)
        if y1 <= y0 or x1 <= x0:  # the prompt lies far from the object: start from its box's corner
            y0, x0 = row["y0"], row["x0"]
            y1, x1 = min(row["y1"], y0 + SEED_SIDE), min(row["x1"], x0 + SEED_SIDE)
        ids, _, _ = self.project.read_window(name, y0, x0, y1, x1)
        return Window(ids == np.uint32(oid), y0, x0)

    def claim(self, name: str, oid: int, mask: Window) -> Window:
        """The part of ``mask`` (a region's answer on large image ``name``) that object ``oid`` may
        take: pixels no one labelled, machine or pseudo pixels, and its own. A person's (or a
        simulated person's) pixels of another saved object stay that object's: to move them,
        correct that object (select it and prompt). What the pending layer shows and what
        :meth:`commit_region` saves."""
        from napari_hitl.interactive.engine import Window
        from napari_hitl.project import KEPT

        y0, x0, y1, x1 = mask.box
        ids, prov, _ = self.project.read_window(name, y0, x0, y1, x1)
        free = (ids == 0) | (ids == np.uint32(oid)) | ~np.isin(prov, KEPT)
        return Window(np.asarray(mask.data, bool) & free, y0, x0)

    def commit_region(self, name: str, oid: int, cls: int, mask: Window, **detail) -> Counts | None:
        """Save a region's answer on large image ``name`` as object ``oid`` of class ``cls`` (a
        person's labels): the pixels of ``mask`` that :meth:`claim` gives it become ``oid``, and
        the object's saved pixels inside the window that the mask leaves out become background
        (a correction of a saved object replaces it there, as on a plane). Only the chunks the
        window covers are rewritten. Returns the counts, or None when nothing changes."""
        counts = self.save_region(name, oid, cls, mask, **detail)
        return None if counts is None else self.region_saved(name, counts)

    def region_saved(self, name: str, counts: Counts) -> Counts:
        """Tell the listeners of a region :meth:`save_region` saved (on the thread they live on)."""
        return self._committed(name, counts, "human")

    def save_region(self, name: str, oid: int, cls: int, mask: Window, **detail) -> Counts | None:
        """:meth:`commit_region` without telling the listeners, for a worker thread: the thread
        the listeners live on then calls :meth:`region_saved` with the counts (unless None)."""
        with self.lock:
            y0, x0, y1, x1 = mask.box
            ids, _, _ = self.project.read_window(name, y0, x0, y1, x1)
            take = self.claim(name, oid, mask).data
            where = take | (ids == np.uint32(oid))
            if not where.any():
                return None
            new = np.where(take, np.uint32(oid), np.uint32(0))
            counts = self.project.commit_window(name, new, {int(oid): int(cls)} if take.any() else {},
                                                offset=(y0, x0), where=where, id=int(oid), **detail)
        return counts

    def edit_objects(self, name: str, plane: np.ndarray, classes: dict[int, int], op: str, ids, *,
                     frame: int | None = None, line=None, seeds=None) -> tuple[np.ndarray, dict[int, int]]:
        """Delete, merge or split objects of ``plane`` (what the person sees, with its classes),
        save the pixels that change, and every saved pixel of the objects involved, as the
        person's (journalled as ``op``), and return the new plane and classes.
        :meth:`undo_edit` takes it back."""
        if op not in EDITS:
            raise InputError(f"an object edit is one of {EDITS}, got {op!r}")
        plane = inst.check_instances(plane, what="objects")
        ids = [int(i) for i in ids]
        with self.lock:
            saved, prov, saved_classes = self.project.read_instances(name, frame=frame)
            if op == "delete":
                new, new_classes = inst.delete(plane, classes, ids[0])
            elif op == "merge":
                new, new_classes = inst.merge(plane, classes, ids)
            else:
                new_id = self.project.reserve_ids(name)
                new, new_classes, made = inst.split(plane, classes, ids[0], line=line, seeds=seeds)
                new = np.where(new == made, np.uint32(new_id), new)
                new_classes[new_id] = new_classes.pop(made)
                ids = [ids[0], new_id]
            where = (new != plane) | np.isin(saved, np.asarray(ids, np.uint32))  # no saved remnant stays
            pixels = np.flatnonzero(where)
            before = saved.ravel()[pixels]
            self.project.commit_instances(name, new, new_classes, where=where, frame=frame, event=op, ids=ids)
            counts = self.project.counts(name)
            edit = Edit(name, frame, op, pixels, before, prov.ravel()[pixels].copy(),
                        {k: v for k, v in saved_classes.items() if k in set(before.tolist())},
                        self.project.label_file(name, frame))
        self.edits = [*self.edits[-(MAX_EDITS - 1):], edit]
        self._committed(name, counts, "human")
        return new, new_classes

    def undo_edit(self) -> tuple[Edit, np.ndarray, dict[int, int]] | None:
        """Take back the newest object edit (journalled as 'undo'); returns it with the saved
        plane and classes as they are now, or None if there is nothing to undo. An edit can be
        undone only while its image holds what the edit saved (no later save)."""
        if not self.edits:
            return None
        e = self.edits[-1]
        with self.lock:
            if self.project.label_file(e.name, e.frame) != e.file:
                self.edits = [x for x in self.edits if (x.name, x.frame) != (e.name, e.frame)]
                raise InputError(f"{e.name!r} was saved again after the {e.op}; Undo edit takes back only an edit "
                                 "that is the image's last change")
            ids, prov, classes = self.project.read_instances(e.name, frame=e.frame)
            ids, prov = ids.copy(), prov.copy()
            ids.ravel()[e.pixels] = e.ids
            prov.ravel()[e.pixels] = e.provenance
            merged = {**classes, **e.classes}
            present = set(inst.ids_of(ids).tolist())
            restored = {k: v for k, v in merged.items() if k in present}
            where = np.zeros(ids.shape, bool)
            where.ravel()[e.pixels] = True
            self.project.commit_instances(e.name, ids, restored, where=where, frame=e.frame, provenance=prov,
                                          event="undo", of=e.op)
            counts = self.project.counts(e.name)
        self.edits.pop()
        self._emit("committed", e.name, counts)
        return e, ids, restored

    def wants_training(self, every: int) -> bool:
        """True once ``every`` answers were saved since the last training round."""
        return self.answers_since_training >= every

    # ------------------------------------------------------------------ jobs
    def predict_job(self, names: list[str] | None = None):
        """``fn(ctx)`` -> a generator job: predict ``names`` (default all; resumable after a pause),
        returns {name: predictions}."""
        from napari_hitl.app.predict import predict_images

        names = self.names if names is None else list(names)
        done: dict = {}
        return lambda ctx=None: predict_images(self.model, names, done)

    def batch_job(self, names: list[str] | None = None):
        """``fn(ctx)``: predict ``names`` (default all) as Dask tasks, saving each result in the
        project as it arrives (a paused or cancelled run resumes where it stopped) ->
        :class:`~napari_hitl.app.batch.BatchReport`."""
        from napari_hitl.app.batch import predict_project

        def run(ctx):
            # stop_wait=0: a run paused for a click or cancelled returns at once (a slide task still
            # finishing its tile is waited for by the next run, on the worker, not by this one)
            report = predict_project(self, self.client(), names, progress=ctx.progress,
                                     should_stop=ctx.should_stop, stop_wait=0)
            from napari_hitl.app.slides import window_results
            from napari_hitl.errors import CorruptFileError

            with self.lock:  # read here, on the job's thread: predicted(report) then reads no file
                if not self.closed:
                    report.results = self.project.results(report.model)
                    try:
                        report.windows = window_results(self.project, report.results)
                    except CorruptFileError:  # the run's results stand; ranking reads them again and
                        report.windows = None  # names the damaged file, as it did before this read
            return report

        return run

    def predicted(self, predictions) -> None:
        """Keep finished predictions: a batch run's report (its saved results are used from now
        on) or predictions made in this process (call on the thread that owns the session)."""
        from napari_hitl.app.batch import BatchReport

        if isinstance(predictions, BatchReport):
            self.predictions.use(predictions.model, predictions.results, predictions.windows)
        else:
            self.predictions.update(predictions)
        self._emit("predicted", predictions)

    def rank(self, choice: str, labelled=()):
        """The images in the order ``choice`` (see :data:`napari_hitl.app.rank.RANKINGS`) puts them,
        from the batch results when there are some (a slide's windows each a row), else from
        predictions made here. A slide's windows that hold a person's labels come after the rest
        (:func:`napari_hitl.app.slides.labelled_windows`, read from the index)."""
        from napari_hitl.app.rank import rank_results, rank_rows
        from napari_hitl.app.slides import labelled_windows

        if self.predictions.model is not None:
            windows = self.predictions.windows()
            return rank_results(self.names, self.predictions.results(), choice, labelled=labelled,
                                windows=windows, labelled_windows=labelled_windows(self.project, windows))
        return rank_rows(self.names, self.predictions, choice, labelled=labelled)

    def suggest_job(self, name: str, frame: int, k: int, n_segments: int, exclude=()):
        """``fn(ctx)`` -> a generator job: the ``k`` most uncertain superpixels of one plane, returns
        (predictions, segments, suggestions); reuses the cached prediction of ``name``."""
        from napari_hitl.app.predict import predict_images, superpixel_suggestions

        cached = self.predictions.get(name)
        exclude = set(exclude)
        n_classes = self.project.n_classes

        def fn(ctx=None):
            preds = cached or (yield from predict_images(self.model, [name], {}))[name]
            image = self.project.read_image(name)
            plane = image[frame] if self.project.record(name).is_stack else image
            seg, sugs = superpixel_suggestions(plane, preds[frame], n_classes, k, n_segments, exclude)
            return preds, seg, sugs

        return fn

    def train_job(self, settings, pseudo: PseudoSettings | None):
        """``fn(ctx)`` -> a generator job: one training round on the project (resumable), returns
        TrainFigures."""
        from napari_hitl.app.train import train_job

        predictions = self.predictions  # read lazily, image by image, by the pseudo-labelling
        state: dict = {}
        return lambda ctx=None: train_job(self.model, settings, settings.steps, pseudo, predictions, self.lock,
                                          state)

    def trained(self, figures) -> None:
        """A round finished: answers start counting again, old predictions are dropped."""
        self.answers_since_training = 0
        self.predictions.reset()
        self._emit("trained", figures)

    def export_job(self, out, fmt: str = "tiff"):
        """``fn(ctx)``: labels, provenance, model and summary into ``out`` -> the summary dict."""
        from napari_hitl.app.export import export_all

        return lambda ctx: export_all(self.project, out, fmt, self.lock, ctx)

    # ------------------------------------------------------------------ time-lapses
    def video(self, name: str):
        """A new :class:`~napari_hitl.app.video.VideoHost` of time-lapse ``name`` (its own tuner)."""
        from napari_hitl.app.video import VideoHost

        return VideoHost(self.project, name)

    def units_job(self, host, k: int, unit: str | None = None):
        """``fn(ctx)``: the ``k`` units of the time-lapse to label next -> list[UnitRow] or None."""
        from napari_hitl.app.video import video_units

        return lambda ctx: video_units(host, k, self.lock, ctx, unit)

    def propagate_job(self, host, steps: int):
        """``fn(ctx)``: one propagation round (resumable) -> PropagateFigures or None."""
        from napari_hitl.app.video import video_propagate

        state: dict = {}
        return lambda ctx: video_propagate(host, steps, self.lock, ctx, state)
