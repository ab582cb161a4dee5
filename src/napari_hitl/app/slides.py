"""Predicting and ranking a slide (a large image) window by window, never holding it whole.

A slide is predicted with :func:`napari_hitl.model.segnet.predict_large` into the project's
cache, in a folder of its own (``<name>.slide/``): ``probs.zarr`` (float16 class probabilities
and the instance head's two maps, ``(C + 2, H, W)``, written band by band), and
``windows/row-<y>.npz``, the scores of one row of windows of :data:`WINDOW` px, written as
soon as the probabilities of that row are final (its pooled features first, in
``windows/features-<y>.npy``, so a run stopped while scoring predicts no tile again for them). Each window is scored like an image
(:func:`napari_hitl.app.rank.image_score`: local consistency, entropy, margin, objects) from
its own maps, with the mean backbone features of the tiles over it (for diversity picks). A
stopped or killed run goes on where it stopped: the bands already written are not predicted
again, the window rows already scored are kept. A killed run predicts one tile row again (for the
blend and the features of the windows it reaches into); a stopped one saves what the tile rows
before the last written band added after it (predict_large's carry, and the feature sums of the
window rows not pooled yet in ``windows/partial-features.npz``), so the next run predicts again
only the tiles it had done of the tile row it stopped in.

The batch (:mod:`napari_hitl.app.batch`) runs :func:`predict_slide` as one Dask task per
slide; the client keeps only the per-window scores (:func:`window_results`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from napari_hitl.errors import CorruptFileError

#: side of the windows of a slide that are ranked beside ordinary images (px)
WINDOW = 1024
#: the tiles and their overlap the slide is predicted in: a tile's step is the window's side, so
#: the band written after each tile row completes a row of windows (scored and saved at once),
#: and a resumed run predicts again only the one tile row that the blend needs
OVERLAP = 128
TILE = WINDOW + OVERLAP
#: the files of a slide's cache folder
PROBS, WINDOWS, PROGRESS, SETTINGS = "probs.zarr", "windows", "progress.json", "settings.json"
#: in ``windows/``: a stopped run's feature sums of the window rows it had not pooled yet
PARTIAL = "partial-features.npz"


@dataclass
class WindowResult:
    """The scores of one window of a slide: ``box`` is ``(y0, x0, y1, x1)`` in full-resolution pixels."""

    name: str
    box: tuple[int, int, int, int]
    scores: dict[str, float]
    features: np.ndarray


def slide_folder(cache_root: Path, name: str) -> Path:
    """The cache folder of slide ``name``'s prediction under a model's cache folder."""
    return Path(cache_root) / f"{name}.slide"


def _windows(n: int, window: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + window)) for a in range(0, n, window)]


def _row_file(folder: Path, y0: int) -> Path:
    return folder / WINDOWS / f"row-{y0}.npz"


def _feature_file(folder: Path, y0: int) -> Path:
    return folder / WINDOWS / f"features-{y0}.npy"


def _write_partial(folder: Path, top: int, sums: dict, counts: dict) -> None:
    """The feature sums of the window rows not pooled yet, as they stood once rows ``[0, top)`` of
    the maps were written (a stopped run's, so the next goes on from there: see predict_slide)."""
    import io as _io

    from napari_hitl.io import atomic_write_bytes

    ys = sorted(counts)
    d = next((len(v[0]) for v in sums.values() if len(v)), 0)
    stack = np.zeros((len(ys), len(counts[ys[0]]) if ys else 0, d))
    for i, y0 in enumerate(ys):
        if y0 in sums:
            stack[i] = sums[y0]
    buf = _io.BytesIO()
    np.savez(buf, top=np.int64(top), ys=np.asarray(ys, np.int64), has=np.asarray([y in sums for y in ys]),
             counts=np.asarray([counts[y] for y in ys], np.float64).reshape(len(ys), -1), sums=stack)
    atomic_write_bytes(folder / WINDOWS / PARTIAL, buf.getvalue())


def _read_partial(folder: Path, top: int, rows: list[int], n_cols: int) -> tuple[dict, dict] | None:
    """``(sums, counts)`` saved by :func:`_write_partial` at ``top`` for exactly the window rows
    ``rows``; None when there is none of that moment (or it is damaged: the tiles are replayed)."""
    try:
        with np.load(folder / WINDOWS / PARTIAL, allow_pickle=False) as z:
            t, ys, has, counts, sums = int(z["top"]), [int(v) for v in z["ys"]], z["has"], z["counts"], z["sums"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if t != top or ys != sorted(rows) or counts.shape != (len(ys), n_cols) or sums.shape[:2] != (len(ys), n_cols) \
            or has.shape != (len(ys),) or not (np.isfinite(sums).all() and np.isfinite(counts).all()):
        return None
    return ({y: sums[i].copy() for i, y in enumerate(ys) if has[i]}, {y: counts[i].copy() for i, y in enumerate(ys)})


def _read_features(folder: Path, y0: int, n: int) -> np.ndarray:
    """The pooled features of the windows of one row (checked)."""
    path = _feature_file(folder, y0)
    try:
        feats = np.load(path, allow_pickle=False)
        if feats.ndim != 2 or len(feats) != n or not np.isfinite(feats).all():
            raise ValueError(f"expected {n} finite feature vectors, got shape {feats.shape}")
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"the window features in {path} are damaged ({err}); delete {path.parent.parent} "
                               "and run Predict & rank again") from err
    return feats


def _write_row(folder: Path, y0: int, boxes: np.ndarray, scores: np.ndarray, features: np.ndarray,
               fields: tuple[str, ...]) -> None:
    import io as _io

    from napari_hitl.io import atomic_write_bytes

    buf = _io.BytesIO()
    np.savez(buf, boxes=boxes.astype(np.int64), scores=scores.astype(np.float64),
             features=features.astype(np.float32), fields=np.asarray(fields))
    atomic_write_bytes(_row_file(folder, y0), buf.getvalue())


def _read_row(path: Path, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """``(boxes, scores, features)`` of one saved window row (checked: a damaged file is named)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            boxes, scores, feats, fields = z["boxes"], z["scores"], z["features"], [str(f) for f in z["fields"]]
        n = len(boxes)
        if not (boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (n, len(fields)) and feats.ndim == 2
                and len(feats) == n and np.isfinite(feats).all()):
            raise ValueError("its arrays do not fit together")
        h, w = shape
        if n and not ((boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
                      and boxes.min() >= 0 and boxes[:, 2].max() <= h and boxes[:, 3].max() <= w):
            raise ValueError("a window lies outside the slide")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(f"the window scores of slide {name!r} in {path} are damaged ({err}); delete "
                               f"{path.parent.parent} and run Predict & rank again") from err
    return boxes, [dict(zip(fields, map(float, row))) for row in scores], feats


def predict_slide(model, image, folder, num_classes: int, stuff=(), beta: float = 0.9, window: int = WINDOW,
                  tile: int = TILE, overlap: int = OVERLAP, progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> dict:
    """Predict the slide ``image`` (a :class:`~napari_hitl.io.LazyImage`) into ``folder`` and score its
    windows (see the module docstring); resumes what a stopped run left there. Returns
    ``{"scores", "features", "cache", "windows", "seconds", "scoring_seconds", "tiles_predicted"}``:
    the mean of the window scores and features (the slide's own row of results), the path of its
    probabilities, its window count, the seconds it took (those spent scoring windows) and the
    tiles this call predicted. ``should_stop()`` cancels (KeyboardInterrupt; what is finished
    stays for the next run)."""
    from napari_hitl.active.uncertainty import Prediction
    from napari_hitl.app.rank import SCORE_FIELDS, image_score
    from napari_hitl.model.segnet import FEATURE_STRIDE, large_rows_done, predict_large

    t0 = time.perf_counter()
    folder = Path(folder)
    h, w = image.shape[:2]
    rows, cols = _windows(h, window), _windows(w, window)
    out = folder / PROBS
    meta = {"window": int(window), "tile": int(tile), "overlap": int(overlap), "classes": int(num_classes),
            "shape": [int(h), int(w)]}
    if large_rows_done(out) is None or _read_meta(folder) != meta:
        # nothing resumable here (or made with other sizes): start afresh, old window rows go too
        import shutil

        from napari_hitl.io import atomic_write_json

        shutil.rmtree(folder, ignore_errors=True)
        atomic_write_json(folder / SETTINGS, meta)
    saved = {y0 for y0, _ in rows if _row_file(folder, y0).is_file()}
    todo = [r for r in rows if r[0] not in saved]
    # a row of windows whose features are saved needs no tile again: only its scores (from the maps)
    pooled = {y0 for y0, _ in todo if _feature_file(folder, y0).is_file()}
    pool = [r for r in todo if r[0] not in pooled]  # rows whose features the tiles still add up
    feat_sum: dict[int, np.ndarray] = {}
    feat_n = {y0: np.zeros(len(cols)) for y0, _ in pool}

    predicted = [0]  # tiles predicted by this call

    def on_features(ty: int, tx: int, feats: np.ndarray) -> None:
        """Add the tile's feature pixels to the windows (of rows still to score) they fall in."""
        predicted[0] += 1
        d, fh, fw = feats.shape
        for y0, y1 in pool:
            a, b = max(y0, ty), min(y1, ty + fh * FEATURE_STRIDE)
            if a >= b:
                continue
            fy0, fy1 = (a - ty) // FEATURE_STRIDE, -(-(b - ty) // FEATURE_STRIDE)
            acc = feat_sum.setdefault(y0, np.zeros((len(cols), d)))
            for j, (x0, x1) in enumerate(cols):
                c, e = max(x0, tx), min(x1, tx + fw * FEATURE_STRIDE)
                if c >= e:
                    continue
                fx0, fx1 = (c - tx) // FEATURE_STRIDE, -(-(e - tx) // FEATURE_STRIDE)
                block = feats[:, fy0:fy1, fx0:fx1]
                acc[j] += block.sum(axis=(1, 2))
                feat_n[y0][j] += block.shape[1] * block.shape[2]

    arr_box: list = []
    scoring = [0.0]  # seconds spent scoring windows
    snap: list = []  # (top, sums, counts) of the rows not pooled yet, once rows [0, top) were written

    def resume_carry(top: int) -> bool:
        """predict_large goes on at ``top`` without a tile row again: only with the feature sums
        a stopped run saved at that moment."""
        left = [y0 for y0, _ in pool if y0 not in pooled]
        saved_sums = _read_partial(folder, top, left, len(cols))
        if saved_sums is None:
            return False
        feat_sum.update(saved_sums[0])
        feat_n.update(saved_sums[1])
        snap[:] = [top, *saved_sums]
        return True

    def on_rows(top: int) -> None:
        """Save the features of every window row whose tiles have all run, then score every
        window row whose probabilities are now final, and save it."""
        import zarr

        from napari_hitl.io import atomic_write

        t = time.perf_counter()
        for y0, y1 in [r for r in pool if r[1] <= top and r[0] not in pooled]:
            mean = feat_sum[y0] / np.maximum(feat_n[y0], 1)[:, None]
            atomic_write(_feature_file(folder, y0), lambda fh: np.save(fh, mean.astype(np.float32)))
            pooled.add(y0)
            feat_sum.pop(y0, None)
        left = [y0 for y0, _ in pool if y0 not in pooled]
        snap[:] = [top, {y0: feat_sum[y0].copy() for y0 in left if y0 in feat_sum},
                   {y0: feat_n[y0].copy() for y0 in left}]
        if not arr_box:
            arr_box.append(zarr.open_array(str(out), mode="r"))
        probs = arr_box[0]
        for y0, y1 in [r for r in todo if r[1] <= top and r[0] not in saved]:
            boxes, scores, feats = [], [], []
            row_feats = _read_features(folder, y0, len(cols))
            for j, (x0, x1) in enumerate(cols):
                if should_stop is not None and should_stop():  # this row is scored next time (no tile again)
                    raise KeyboardInterrupt("prediction cancelled")
                f = row_feats[j]
                maps = np.asarray(probs[:, y0:y1, x0:x1], np.float32)
                pred = Prediction.from_instance_maps(maps, num_classes, f.astype(np.float32), stuff)
                s = image_score(0, "", [pred], beta)
                boxes.append((y0, x0, y1, x1))
                scores.append([getattr(s, k) for k in SCORE_FIELDS])
                feats.append(f)
            _write_row(folder, y0, np.asarray(boxes), np.asarray(scores), np.asarray(feats), SCORE_FIELDS)
            saved.add(y0)
        scoring[0] += time.perf_counter() - t

    first = pool[0][0] if pool else h
    try:
        predict_large(model, image, out, tile=tile, overlap=overlap, with_instances=True, progress=progress,
                      should_stop=should_stop, resume=True, on_features=on_features, on_rows=on_rows,
                      replay_from=first, resume_carry=resume_carry)
    except KeyboardInterrupt:  # stopped: the next run goes on from the last written band, no tile row again
        if snap:
            _write_partial(folder, *snap)
        raise
    on_rows(h)
    (folder / WINDOWS / PARTIAL).unlink(missing_ok=True)
    boxes, scores, feats = _read_rows(folder, folder.name.removesuffix(".slide"), (h, w))
    return {"scores": {k: float(np.mean([s[k] for s in scores])) for k in SCORE_FIELDS},
            "features": np.mean(feats, axis=0).astype(np.float32), "cache": str(out), "windows": len(boxes),
            "seconds": time.perf_counter() - t0, "scoring_seconds": scoring[0],
            "tiles_predicted": predicted[0]}


def _read_meta(folder: Path) -> dict | None:
    import json

    try:
        return json.loads((folder / SETTINGS).read_text())
    except (OSError, ValueError):
        return None


def _read_rows(folder: Path, name: str, shape: tuple[int, int]):
    boxes, scores, feats = [], [], []
    files = sorted((folder / WINDOWS).glob("row-*.npz"), key=lambda p: int(p.stem.split("-")[1])) \
        if (folder / WINDOWS).is_dir() else []
    for path in files:
        b, s, f = _read_row(path, name, shape)
        boxes += [tuple(int(v) for v in row) for row in b]
        scores += s
        feats += list(f)
    return boxes, scores, feats


def window_results(project, results: dict[str, dict]) -> list[WindowResult]:
    """The window scores of every slide that has a saved result in ``results`` (a model's
    :meth:`~napari_hitl.project.Project.results`), read from the cache (small: scores and
    features per window, no maps); a damaged window file is named."""
    out = []
    for name, result in results.items():
        if not project.is_slide(name):
            continue
        folder = Path(result["cache"]).parent
        boxes, scores, feats = _read_rows(folder, name, project.record(name).shape)
        out += [WindowResult(name, b, s, f) for b, s, f in zip(boxes, scores, feats)]
    return out


def tile_count(shape, tile: int = TILE, overlap: int = OVERLAP) -> int:
    """How many tiles :func:`predict_slide` predicts on a slide of ``shape`` (its progress total)."""
    from napari_hitl.model.segnet import large_tile_count

    return large_tile_count(int(shape[0]), int(shape[1]), tile, overlap)


def write_progress(folder, done: int, total: int) -> None:
    """Record how many tiles of the slide in ``folder`` are predicted (read by the client)."""
    import json

    from napari_hitl.io import atomic_write_bytes

    atomic_write_bytes(Path(folder) / PROGRESS, json.dumps({"done": int(done), "total": int(total)}).encode())


def read_progress(folder) -> int:
    """Tiles predicted so far in ``folder`` (0 when nothing is recorded or the record is unreadable)."""
    import json

    try:
        return max(0, int(json.loads((Path(folder) / PROGRESS).read_text())["done"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def labelled_windows(project, windows) -> set[tuple[str, tuple[int, int, int, int]]]:
    """The ``(name, box)`` of the ``windows`` (:class:`WindowResult`) that hold labels of a person
    (or of the simulated annotator): a saved object with such pixels in a label chunk over the
    window (:meth:`~napari_hitl.project.Project.labelled_boxes`, read from the index, no label
    file; exact where windows and label chunks align, as their default sides do, else a window
    that the box of such an object's pixels in a chunk meets)."""
    boxes: dict[str, np.ndarray] = {}
    out = set()
    for wr in windows:
        if wr.name not in boxes:
            boxes[wr.name] = np.asarray(project.labelled_boxes(wr.name), np.int64).reshape(-1, 4)
        b = boxes[wr.name]
        y0, x0, y1, x1 = (int(v) for v in wr.box)
        if len(b) and ((b[:, 0] < y1) & (b[:, 2] > y0) & (b[:, 1] < x1) & (b[:, 3] > x0)).any():
            out.add((wr.name, (y0, x0, y1, x1)))
    return out
