"""Predict and rank a whole project as Dask tasks, so the work spreads over cores and machines.

The client (this process, the project's one writer) sends the model's weights to every worker
once, then submits one task per image, keeping only a bounded number in flight so its memory
does not grow with the project. A task reads its image from disk, predicts it, writes the
class probabilities as chunked zarr into the project's cache and returns only small results:
the image's uncertainty scores and pooled features. The client saves each result in the
project as it arrives (one transaction each), so a run that is cancelled or killed resumes
where it stopped and an image is never saved twice for one model. A slide (a large image) is a
task of its own that predicts it tile by tile into the cache and scores its windows
(:mod:`napari_hitl.app.slides`), resumable too. A LocalCluster over this
machine's cores is the default; ``scheduler`` names an existing cluster (its workers must see
the project and the images at the same paths).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from napari_hitl.errors import InputError, ProjectError

#: the project cache folder holding the probability maps, per model token
CACHE_FOLDER = "predictions"

_MODELS: dict[str, object] = {}  # on each worker: model token -> model (weights arrive once)

#: the stop signs this process made that a slide task may still read (a run's while it runs, then
#: those left to slide tasks still stopping); any other ``.stop-<pid>-<ns>`` of this process's pid
#: in a cache is stale (:func:`sweep_signs`)
_LIVE_SIGNS: set[Path] = set()


@dataclass
class BatchReport:
    """What a run did: images predicted now, skipped (already done for this model), failed."""

    model: str
    predicted: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0
    workers: int = 0
    #: per slide finished in this run: its task's seconds, window-scoring seconds, windows, tiles predicted
    slides: dict[str, dict] = field(default_factory=dict)
    #: the model's saved results and its slides' window scores, read after the run on the thread
    #: that ran it (:meth:`napari_hitl.app.session.Session.batch_job`), so that whoever takes the
    #: report (the dock's UI thread) reads no file; None: not read
    results: dict | None = field(default=None, repr=False)
    windows: list | None = field(default=None, repr=False)


def model_bytes(host) -> tuple[bytes, str]:
    """The project's model checkpoint as bytes and its token (a hash of them). A project with no
    trained model first saves the model it would predict with (journalled), so a run that
    resumes later finds the same token."""
    path = host.checkpoint
    if not path.is_file():
        host.get().save()
        host.project.log("checkpoint", name=path.stem, note="saved before batch prediction (untrained head)")
    data = path.read_bytes()
    return data, hashlib.sha1(data).hexdigest()[:16]


def _new_sign(cache_root: Path) -> Path:
    """A new stop sign's path for a run (the file is made only to stop its slide tasks)."""
    sign = cache_root / f".stop-{os.getpid()}-{time.time_ns()}"
    _LIVE_SIGNS.add(sign)
    return sign


def _drop_sign(sign: Path) -> None:
    """Delete a stop sign no task reads any more."""
    _LIVE_SIGNS.discard(sign)
    sign.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (True when that cannot be told: its sign then stays)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it runs
        return True
    return True


def sweep_signs(root: Path) -> list[Path]:
    """Delete the stale stop signs under the prediction cache ``root`` (in it and in its model
    folders): those of a process that no longer runs (killed, or ended while a slide task was
    stopping), and this process's own that no run or stopping task holds (:data:`_LIVE_SIGNS`).
    A sign of another running process stays. Returns the deleted paths."""
    gone = []
    for sign in [*root.glob(".stop-*"), *root.glob("*/.stop-*")] if root.is_dir() else []:
        try:
            pid = int(sign.name.split("-")[1])
        except (IndexError, ValueError):
            continue  # not a sign of ours
        if sign in _LIVE_SIGNS or (pid != os.getpid() and _pid_alive(pid)):
            continue
        sign.unlink(missing_ok=True)
        gone.append(sign)
    return gone


def release_signs(cache_dir: Path) -> None:
    """Forget and delete this process's stop signs under ``cache_dir``: after a session's local
    cluster closed, whose tasks (the only readers) ended with it."""
    for sign in [s for s in _LIVE_SIGNS if cache_dir in s.parents]:
        _drop_sign(sign)


def _drop_other_models(project, token: str, busy: set | frozenset = frozenset()) -> None:
    """Forget the results and cached maps of earlier models (they no longer describe the model),
    but for the cache folders in ``busy``: those of slide tasks still stopping, whose stop sign
    lies there (deleted, the task would go on predicting its whole slide)."""
    dropped = project.drop_results(keep=token)
    root = project.cache_dir / CACHE_FOLDER
    for old in root.iterdir() if root.is_dir() else []:
        if old.is_dir() and old.name != token and old not in busy:
            shutil.rmtree(old, ignore_errors=True)
    if dropped:
        project.log("results_dropped", kept=token, images=dropped)


def _worker_model(token: str, weights: bytes, num_classes: int):
    """The model of ``token`` on this worker, built from ``weights`` on first use."""
    model = _MODELS.get(token)
    if model is None:
        import torch

        from napari_hitl.model.train import Trainer

        threads = int(os.environ.get("NAPARI_HITL_WORKER_THREADS", "1"))
        torch.set_num_threads(max(1, threads))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(weights)
            trainer = Trainer(num_classes, checkpoint_path=path)
        from napari_hitl.model.segnet import for_prediction

        model = for_prediction(trainer.model)  # this copy only predicts: norms folded, channels-last
        _MODELS.clear()  # one model per worker: an old token's weights are not kept
        _MODELS[token] = model
    return model


def predict_task(name: str, paths: list[str], stack: bool, token: str, weights: bytes, num_classes: int,
                 cache: str, stuff: tuple = (), beta: float = 0.9) -> dict:
    """One image on a worker: predict classes and objects, write the maps (class probabilities,
    then the instance head's boundary and distance) to ``cache`` (zarr, atomically), return
    ``{"name", "scores", "features", "cache", "seconds"}`` (small)."""
    from napari_hitl import io
    from napari_hitl.active.uncertainty import Prediction
    from napari_hitl.app.rank import SCORE_FIELDS, image_score
    from napari_hitl.model.segnet import predict_with_features

    t0 = time.perf_counter()
    model = _worker_model(token, weights, num_classes)
    if len(paths) > 1:
        planes = [io.read_image(p) for p in paths]
    else:
        image = io.read_image(paths[0])
        planes = list(image) if stack else [image]
    preds, probs = [], []
    for plane in planes:
        p, f = predict_with_features(model, plane, with_instances=True)
        preds.append(Prediction.from_instance_maps(p, num_classes, f.mean(axis=(1, 2)).astype(np.float32), stuff))
        probs.append(p.astype(np.float16))
    _write_probs(Path(cache), np.stack(probs))
    score = image_score(0, name, preds, beta)
    return {"name": name, "scores": {f: float(getattr(score, f)) for f in SCORE_FIELDS},
            "features": np.mean([p.features for p in preds], axis=0).astype(np.float32),
            "cache": cache, "seconds": time.perf_counter() - t0}


def slide_task(name: str, path: str, shape: tuple, token: str, weights: bytes, num_classes: int, folder: str,
               stuff: tuple = (), beta: float = 0.9, stop_file: str | None = None, sizes: tuple | None = None) -> dict:
    """One slide on a worker: :func:`napari_hitl.app.slides.predict_slide` into ``folder`` (resuming
    what an earlier run left there), its tile count recorded there as it goes; stops between
    tiles once ``stop_file`` exists; ``sizes``: (window, tile, overlap), default the module's. Returns ``{"name", "scores", "features", "cache", "windows",
    "seconds"}`` (small), or ``{"name", "cancelled": True}``."""
    from napari_hitl import io
    from napari_hitl.app.slides import OVERLAP, TILE, WINDOW, predict_slide, write_progress
    from napari_hitl.errors import CorruptFileError

    model = _worker_model(token, weights, num_classes)
    stop = (lambda: os.path.exists(stop_file)) if stop_file else None
    with io.open_lazy(path) as image:
        if tuple(image.shape[:2]) != tuple(shape):
            raise CorruptFileError(f"{path} is now {image.shape[0]}x{image.shape[1]} but the project recorded "
                                   f"{shape[0]}x{shape[1]}; the file was changed after the project was made")
        try:
            window, tile, overlap = sizes or (WINDOW, TILE, OVERLAP)
            out = predict_slide(model, image, folder, num_classes, stuff, beta, window, tile, overlap,
                                should_stop=stop, progress=lambda k, n: write_progress(folder, k, n))
        except KeyboardInterrupt:  # stopped between tiles: what is finished stays for the next run
            return {"name": name, "cancelled": True}
    return {"name": name, **out}


def _cache_codecs() -> dict:
    """How the cache compresses its maps: with zarr 3, zstd at level 1, which on float16
    probabilities packs as small as zarr's default (zstd at its level 3; both about 0.7 of
    raw) in about half the time; with zarr 2 its default (Blosc lz4), fast already."""
    try:
        from zarr.codecs import BytesCodec, ZstdCodec
    except ImportError:  # zarr 2
        return {}
    return {"codecs": [BytesCodec(), ZstdCodec(level=1)]}


def _write_probs(path: Path, probs: np.ndarray) -> None:
    """Probabilities ``(T, C, H, W)`` as a chunked zarr folder, swapped into place whole."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        arr = zarr.open_array(str(tmp / "p.zarr"), mode="w", shape=probs.shape, dtype=probs.dtype,
                              chunks=(1, 1, min(probs.shape[2], 512), min(probs.shape[3], 512)),
                              **_cache_codecs())
        arr[...] = probs
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "p.zarr", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_probs(project, name: str, model: str) -> np.ndarray:
    """The cached probabilities ``(T, C, H, W)`` of image ``name`` under ``model`` (read lazily
    from zarr; only what is indexed is loaded)."""
    result = project.results(model).get(name)
    if result is None:
        raise InputError(f"{name!r} has no prediction of model {model} yet; run napari-hitl predict")
    return open_probs(name, result)


def open_probs(name: str, result: dict):
    """The zarr array of a saved result's cached maps; a missing or damaged entry is named."""
    import zarr

    try:
        return zarr.open_array(str(result["cache"]), mode="r")
    except Exception as err:  # noqa: BLE001 - a missing or damaged cache entry is named
        raise ProjectError(f"the cached prediction of {name!r} ({result['cache']}) is missing or damaged "
                           f"({type(err).__name__}); run Predict & rank again") from err


def local_cluster(workers: int | None = None, threads_per_worker: int = 1):
    """A local Dask cluster of worker processes over this machine's cores.

    The scheduler and the workers are started as programs of their own (``dask spec``), not
    by multiprocessing's spawn, which would re-run the script that started napari (a script
    without an ``if __name__ == "__main__"`` guard would open a second napari, or fail).
    """
    from distributed.deploy.subprocess import SubprocessCluster

    workers = workers or max(1, os.cpu_count() or 1)
    os.environ["NAPARI_HITL_WORKER_THREADS"] = str(threads_per_worker)
    cluster = SubprocessCluster(n_workers=workers, threads_per_worker=threads_per_worker, dashboard_address=None,
                                silence_logs=40)
    try:
        cluster.wait_for_workers(workers, timeout=300)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _stop_slides(session, client, slides: dict, stop_file: Path, stop_wait: float) -> None:
    """Wait up to ``stop_wait`` s for the slide tasks ``slides`` (name -> future) that saw the stop
    sign ``stop_file``; those still running are kept in ``session.stopping_slides`` for the next
    run (:func:`_await_stopping`), and the sign goes once every one has ended: here, or when the
    last of them ends (a done callback), or in the next run."""
    from distributed import wait

    if stop_wait > 0:
        try:
            with client.as_current():  # distributed.wait asks for the default client
                wait(list(slides.values()), timeout=stop_wait, return_when="ALL_COMPLETED")
        except Exception:  # noqa: BLE001 - a timeout (still running: handed to the next run below), a task
            pass  # lost with its worker (nothing runs it), or the cluster unreachable: this runs in the
            # batch's cleanup, where raising would hide the run's own error; a task not seen done is handed on
    left = {n: f for n, f in slides.items() if not f.done()}
    for f in slides.values():
        if f.done():
            client.cancel(f)
    if not left:
        _drop_sign(stop_file)
        return
    holders = list(left.values())

    def ended(_future) -> None:  # on a thread of the client's: the last task to end takes the sign
        if all(g.status in ("finished", "error") for g in holders):  # ran to its end (a cancelled
            _drop_sign(stop_file)  # future may still run on a cluster at an address: its sign stays)

    for name, f in left.items():
        session.stopping_slides[name] = (f, stop_file)
        f.add_done_callback(ended)


#: seconds a run waits at most for the slide tasks an earlier run left stopping (each stops
#: between two tiles: seconds, unless a tile is very slow)
STOPPING_WAIT = 120.0


def _await_stopping(session, client, todo: list[str], report: BatchReport, stop_now: Callable[[], bool],
                    poll: float, limit: float | None = None) -> list[str] | None:
    """Before slides are predicted again: wait (up to ``limit`` s, in steps of ``poll``) for the
    tasks an earlier run of ``session`` left stopping on them; a slide whose task still runs
    then is left out of this run (named in ``report.failed``), so two tasks never write its
    cache at once. None: ``stop_now()`` said stop meanwhile (the run then does nothing)."""
    from distributed import wait

    stopping = session.stopping_slides
    if not stopping:
        return todo
    limit = STOPPING_WAIT if limit is None else limit
    live = client.status not in ("closing", "closed")
    futures = [f for f, _ in stopping.values() if f.client is client and not f.done()]
    deadline = time.monotonic() + limit
    while futures and live and time.monotonic() < deadline:
        if stop_now():
            report.cancelled = True
            return None
        try:
            with client.as_current():
                wait(futures, timeout=poll, return_when="ALL_COMPLETED")
        except (TimeoutError, CancelledError):  # still running, or lost: nothing runs it
            pass
        except Exception as err:
            if stop_now():  # the session closed the client meanwhile
                report.cancelled = True
                return None
            raise ProjectError(f"waiting for the slide tasks an earlier run left stopping failed "
                               f"({type(err).__name__}: {err}); run Predict & rank again") from err
        futures = [f for f in futures if not f.done()]
    busy = set()
    for name, (f, sign) in list(stopping.items()):
        if f.client is client and not f.done() and f.status != "cancelled":
            busy.add(name)
            continue
        del stopping[name]  # ended (or lost with its client: nothing of this session runs it)
        if f.client is client and live:
            client.cancel(f)
        if not any(s == sign for _, s in stopping.values()):
            _drop_sign(sign)
    for name in busy & set(todo):
        report.failed[name] = (f"its task from the previous run is still stopping after {limit:.0f} s (a tile "
                               "takes that long?); run Predict & rank again later")
    return [n for n in todo if n not in busy]


def connect(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1):
    """``(client, cluster)``: a Dask client of the cluster at ``scheduler`` (cluster None), or of a
    new :func:`local_cluster` of ``workers`` processes. Never dask's default client
    (``set_as_default=False``): napari's lazily read images (a slide's dask arrays) are computed
    in this process, never shipped to the cluster (which cannot pickle open files). Close both
    with :func:`disconnect`."""
    from distributed import Client

    if scheduler:
        return Client(scheduler, timeout=30, set_as_default=False), None
    cluster = local_cluster(workers, threads_per_worker)
    try:
        return Client(cluster, set_as_default=False), cluster
    except BaseException:
        cluster.close()
        raise


def disconnect(client, cluster) -> None:
    """Close what :func:`connect` opened: the client, then the local cluster (if any)."""
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


def predict_project(session, client, names: list[str] | None = None, *,
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, in_flight: int | None = None,
                    poll: float = 0.25, slide_sizes: tuple[int, int, int] | None = None,
                    stop_wait: float = 120.0) -> BatchReport:
    """Predict ``names`` (default: every image) of ``session``'s project on the Dask ``client``,
    saving each result as it arrives; images already predicted by this model are skipped.
    At most ``in_flight`` tasks (default: 2 per worker thread) are submitted at a time.

    A slide (a large image) is one task of its own, submitted first: predicted tile by tile
    into the cache and scored window by window (:mod:`napari_hitl.app.slides`), resuming what a
    stopped run left. ``progress(done, total)`` then counts an ordinary image as 1 and a slide
    as its tiles (read from its cache folder every ``poll`` seconds while it runs).
    ``slide_sizes``: (window, tile, overlap) of slides (default those of :mod:`napari_hitl.app.slides`).
    Cancelled, the run waits up to ``stop_wait`` seconds for a running slide task to stop (it
    does between two tiles); one still running then is left to its stop sign and kept in
    ``session.stopping_slides``, and the next run of the session waits for it (up to
    :data:`STOPPING_WAIT` s, on its own thread, itself stoppable) before it predicts that slide
    again, so no two tasks write one slide's cache. The dock passes ``stop_wait=0``: a run paused for a click or
    cancelled returns at once. A session closed meanwhile (``session.closed``) stops the run;
    nothing is saved after that."""
    from distributed import as_completed, wait

    from napari_hitl.app.slides import OVERLAP, TILE, WINDOW, read_progress, slide_folder, tile_count

    project = session.project
    names = [r.name for r in project.images] if names is None else list(names)
    weights, token = model_bytes(session.model)
    report = BatchReport(model=token)
    t0 = time.perf_counter()
    done = project.results(token, features=False)  # which are finished: the features stay on disk
    todo = [n for n in names if n not in done]
    todo.sort(key=lambda n: not project.is_slide(n))  # slides first: the long tasks start early
    report.skipped = len(names) - len(todo)
    threads = sum(client.nthreads().values()) or 1
    report.workers = len(client.nthreads())
    in_flight = in_flight or 2 * threads
    # hash=False: the token names the weights already; dask's own hash of megabytes of bytes runs
    # in the client's event loop and held the GIL (a 0.5 s stall of the dock's UI thread)
    weights_future = client.scatter(weights, broadcast=True, hash=False)
    cache_root = project.cache_dir / CACHE_FOLDER / token
    cache_root.mkdir(parents=True, exist_ok=True)
    sweep_signs(cache_root.parent)  # those a killed process, or a closed session, left behind
    n_classes = project.n_classes
    stuff = project.stuff_classes
    sizes = tuple(slide_sizes or (WINDOW, TILE, OVERLAP))
    weight = {n: tile_count(project.record(n).shape, *sizes[1:]) if project.is_slide(n) else 1 for n in names}
    total, finished = sum(weight.values()), sum(weight[n] for n in names if n in done)
    running: dict[str, Path] = {}  # slide -> its cache folder, while its task runs
    resent: dict[str, int] = {}  # tasks submitted again after the scheduler lost them
    if progress is not None:
        progress(finished, total)

    name_of: dict[str, str] = {}  # task key -> image name

    def key_of(name: str) -> str:
        """A task's key: a resent task gets a new one (the client forgets a lost key's future)."""
        n = resent.get(name, 0)
        key = f"predict-{token}-{name}" if n == 0 else f"predict-{token}-{name}-again{n}"
        name_of[key] = name
        return key

    def submit(name):
        rec = project.record(name)
        paths = [str(p) for p in project.image_paths(name)]
        if project.is_slide(name):
            running[name] = slide_folder(cache_root, name)
            return client.submit(slide_task, name, paths[0], tuple(rec.shape), token, weights_future, n_classes,
                                 str(running[name]), stuff, 0.9, str(stop_file), sizes, key=key_of(name),
                                 pure=False, retries=2)
        return client.submit(predict_task, name, paths, rec.is_stack, token, weights_future, n_classes,
                             str(cache_root / f"{name}.zarr"), stuff, key=key_of(name), pure=False,
                             retries=2)

    shown_last = [finished]

    def show() -> None:
        """Tell ``progress`` the finished work (images, and the tiles of slides running) if it moved."""
        now = finished + sum(min(read_progress(f), weight[n]) for n, f in running.items())
        if progress is not None and now != shown_last[0]:
            shown_last[0] = now
            progress(now, total)

    def stop_now() -> bool:
        return session.closed or (should_stop is not None and should_stop())

    # first the slide tasks an earlier run left stopping (of this model or an earlier one): the
    # earlier models' cache folders go after, but for those holding the stop sign of a task still running
    todo = _await_stopping(session, client, todo, report, stop_now, poll)
    if todo is None:  # stopped while waiting for them: nothing submitted
        todo = []
    _drop_other_models(project, token, {sign.parent for _, sign in session.stopping_slides.values()})
    stop_file = _new_sign(cache_root)  # made (touched) only to stop slide tasks of this run
    queue = iter(todo)
    pending = as_completed(loop=client.loop)  # our client, never dask's default (there may be none)
    submitted = set()
    for name in queue:
        submitted.add(f := submit(name))
        pending.add(f)
        if len(submitted) >= in_flight:
            break
    try:
        while not pending.is_empty():
            batch = pending.next_batch(block=False) if pending.has_ready() else []
            if not batch:  # nothing finished yet: show the slides' progress, listen for a stop
                if running:
                    show()
                if stop_now():
                    report.cancelled = True
                    break
                try:  # back as soon as a task finishes, or after ``poll`` seconds
                    with client.as_current():  # distributed.wait asks for the default client
                        wait(list(submitted), timeout=poll, return_when="FIRST_COMPLETED")
                except (TimeoutError, CancelledError):  # nothing finished yet, or a task lost (its
                    pass  # future is cancelled: handled with its result below, sent again)
                except Exception as err:
                    if stop_now():  # the session closed the client meanwhile
                        report.cancelled = True
                        break
                    raise ProjectError(f"waiting for the prediction tasks on the Dask cluster failed "
                                       f"({type(err).__name__}: {err}); the images finished so far are "
                                       "saved: run Predict & rank again") from err
                continue
            for future in batch:
                if future.status == "cancelled" and (stop_now() or client.status in ("closing", "closed")):
                    # cancelled by closing the client (the session closed), not lost: not sent again, and
                    # still counted as left running (its slide gets the stop sign below)
                    report.cancelled = True
                    break
                submitted.discard(future)
                name = name_of.pop(future.key)  # (a finished key is not asked again: the dict stays small)
                running.pop(name, None)
                try:
                    result = future.result()
                except CancelledError as err:
                    # the scheduler forgot the task: its worker died holding the only copy of the weights
                    # (Dask's memory manager drops the broadcast's extra copies); send them again, retry
                    if resent.get(name, 0) < 2:
                        resent[name] = resent.get(name, 0) + 1
                        if weights_future.status != "finished":
                            weights_future = client.scatter(weights, broadcast=True, hash=False)
                        submitted.add(f := submit(name))
                        pending.add(f)
                        continue
                    report.failed[name] = f"{type(err).__name__}: {err}"
                except Exception as err:  # noqa: BLE001 - one image's failure is reported, the run goes on
                    report.failed[name] = f"{type(err).__name__}: {err}"
                else:
                    if result.get("cancelled"):  # a slide stopped by the stop sign: not finished
                        report.cancelled = True
                        continue
                    # saved before anything else: a finished image is never thrown away (under the
                    # session's lock, so a close on another thread waits for this one save only)
                    with session.lock:
                        if session.closed:
                            report.cancelled = True
                            break
                        project.save_result(result["name"], token, result["scores"], result["features"],
                                            result["cache"])
                    report.predicted.append(result["name"])
                    if "windows" in result:
                        report.slides[name] = {k: result[k] for k in ("seconds", "scoring_seconds", "windows",
                                                                      "tiles_predicted")}
                finished += weight.get(name, 1)
                show()
                nxt = next(queue, None)
                if nxt is not None:
                    submitted.add(f := submit(nxt))
                    pending.add(f)
            if report.cancelled or stop_now():
                report.cancelled = True
                break
    finally:
        live = client.status not in ("closing", "closed")  # a session closed meanwhile closed it
        if submitted:  # the loop ended early (cancelled, or an error): tasks of this run are left
            report.cancelled = True
            # a running slide task stops between tiles once it sees the stop sign (Dask cannot stop a
            # running task); what it finished stays in the cache for the next run
            stop_file.touch()
            slides = [f for f in submitted if name_of[f.key] in running]
            if live:
                client.cancel([f for f in submitted if f not in slides])
            if slides and live:
                _stop_slides(session, client, {name_of[f.key]: f for f in slides}, stop_file, stop_wait)
            elif not slides:
                _drop_sign(stop_file)
            # a closed client: its tasks are gone with a local cluster (Session.close then releases
            # the sign); one on a cluster at an address still sees the sign, which stays for it
        else:  # ran to its end: no task of it reads the sign (never made)
            _drop_sign(stop_file)
        if live:
            if any(sign == stop_file for _, sign in session.stopping_slides.values()):
                # slide tasks left stopping depend on the weights: cancelling those would cancel them
                # too (they would read as ended while they run, and their stop sign go under them)
                weights_future.release()
            else:
                client.cancel(weights_future)
            report.workers = max(report.workers, len(client.nthreads()))
        report.seconds = time.perf_counter() - t0
    with session.lock:
        if session.closed:
            return report  # the project is closed: nothing more is written
        project.log("batch_predicted", model=token, predicted=len(report.predicted), skipped=report.skipped,
                    failed=len(report.failed), cancelled=report.cancelled, workers=report.workers,
                    seconds=round(report.seconds, 1))
    return report
