"""Scale, one large image: a generated whole-slide TIFF (default 20,000 x 20,000 RGB, JPEG tiles
of 512 and a pyramid, as slide scanners write them), opened lazily.

Measures, each in a fresh process so its peak memory is its own:
- opening the file and reading what a first view needs (the coarsest level and one
  full-resolution tile); under a display (``xvfb-run -a``) also napari: the file opened
  through the plugin's reader as a multiscale layer until its first frame is drawn (the
  first time, with the reader's imports; then again, as a second image would), and a zoom
  to full resolution until that frame is drawn (:mod:`napari_hitl.napari._bench`);
- the click engine (clicknet): the click robot corrects generated objects (ellipses with
  known masks) at places across the slide; the time of every click, split into clicks that
  had to prepare a new crop (read its window and encode it) and clicks on a prepared crop;
- the segmentation model over a smaller generated slide (``--predict-side``) with
  :func:`napari_hitl.model.segnet.predict_large` (tiles read one at a time, blended, written
  to zarr): megapixels per second, and the time that gives for the large slide;
- the project store: a project made from the slide (its labels in chunks of
  :data:`napari_hitl.project.SLIDE_CHUNK`), then windows of 1024 x 1024 (what the click
  engine answers with first) committed around objects across the slide as the dock's Accept
  commits them (:meth:`~napari_hitl.project.Project.commit_window`, the object's pixels as
  human labels): ms per commit, chunks rewritten, and reading such a window back;
- the peak resident memory (``ru_maxrss``) of each process.
Targets (issue 20): first view <= 3 s, a click <= 100 ms after its crop is prepared, peak
memory under 2 GB. The slide is written once into a temporary folder (``--slide-dir``) and
reused while its parameters match.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: one object (an ellipse) per cell of this side, at most; the generator's grid
CELL = 160
TILE = 512


def add_arguments(parser, with_json: bool = True) -> None:
    parser.add_argument("--side", type=int, default=20000, help="slide side in pixels (default: %(default)s)")
    parser.add_argument("--objects", type=int, default=12, help="objects the click robot corrects")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per object")
    parser.add_argument("--slide-dir", default=None,
                        help="folder for the generated slide (default: the system's temporary folder)")
    parser.add_argument("--skip-napari", action="store_true", help="do not measure napari's first frame")
    parser.add_argument("--repeat", type=int, default=3, help="napari measurements, each in a fresh process")
    parser.add_argument("--commits", type=int, default=20,
                        help="click windows committed to a project of the slide (0: skip; default: %(default)s)")
    parser.add_argument("--predict-side", type=int, default=4096,
                        help="side of a slide the segmentation model predicts whole with predict_large, "
                             "for its rate and memory (0: skip; default: %(default)s)")
    if with_json:
        parser.add_argument("--json", help="write the figures here")


# --------------------------------------------------------------------------- the generated slide

def make_cells(side: int, seed: int = 0) -> dict:
    """Per grid cell: whether it holds an object, its centre and radii (ellipses inside the cell)."""
    rng = np.random.default_rng(seed)
    n = -(-side // CELL)
    ry = rng.uniform(22, 60, (n, n))
    rx = rng.uniform(22, 60, (n, n))
    margin = np.maximum(ry, rx) + 6
    cy = rng.uniform(0, 1, (n, n)) * (CELL - 2 * margin) + margin
    cx = rng.uniform(0, 1, (n, n)) * (CELL - 2 * margin) + margin
    return {"present": rng.uniform(0, 1, (n, n)) < 0.7, "cy": cy, "cx": cx, "ry": ry, "rx": rx}


def slide_pixels(cells: dict, y: np.ndarray, x: np.ndarray, rng) -> np.ndarray:
    """uint8 RGB at full-resolution coordinates ``y`` (h, 1) and ``x`` (1, w): pale pink
    background, purple ellipses, sensor noise."""
    n = cells["cy"].shape[0]
    iy, ix = np.minimum(y // CELL, n - 1), np.minimum(x // CELL, n - 1)
    dy = (y - iy * CELL - cells["cy"][iy, ix]) / cells["ry"][iy, ix]
    dx = (x - ix * CELL - cells["cx"][iy, ix]) / cells["rx"][iy, ix]
    inside = (dy * dy + dx * dx <= 1.0) & cells["present"][iy, ix]
    out = np.empty(inside.shape + (3,), np.uint8)
    noise = rng.integers(0, 12, inside.shape, dtype=np.uint8)
    for c, (bg, fg) in enumerate(((232, 110), (208, 60), (222, 150))):
        out[..., c] = np.where(inside, fg, bg) - noise
    return out


def object_mask(cells: dict, i: int, j: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Bool mask of the object of cell (i, j) over the image box (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = box
    y = np.arange(y0, y1)[:, None]
    x = np.arange(x0, x1)[None, :]
    dy = (y - i * CELL - cells["cy"][i, j]) / cells["ry"][i, j]
    dx = (x - j * CELL - cells["cx"][i, j]) / cells["rx"][i, j]
    return dy * dy + dx * dx <= 1.0


def write_slide(path: Path, side: int, seed: int = 0) -> int:
    """Write the slide as a tiled, JPEG-compressed pyramidal TIFF, tile by tile (a few MB of
    memory); levels halve until the longer side is at most 1024. Returns the level count."""
    import tifffile

    cells = make_cells(side, seed)
    rng = np.random.default_rng(seed + 1)
    shapes = [side]
    while shapes[-1] > 1024:
        shapes.append(-(-shapes[-1] // 2))

    def tiles(level_side: int, step: int):
        for ty in range(0, level_side, TILE):
            y = (ty + np.arange(TILE))[:, None] * step + step // 2
            for tx in range(0, level_side, TILE):
                x = (tx + np.arange(TILE))[None, :] * step + step // 2
                yield slide_pixels(cells, y, x, rng)

    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, s in enumerate(shapes):
            tw.write(tiles(s, 2 ** k), shape=(s, s, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 90},
                     subifds=len(shapes) - 1 if k == 0 else None, subfiletype=1 if k else 0)
    os.replace(tmp, path)
    return len(shapes)


# --------------------------------------------------------------------------- measured in children

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def measure_open(path: str) -> dict:
    """Open lazily, read the coarsest level whole and one full-resolution tile."""
    t0 = time.perf_counter()
    import dask.array  # noqa: F401 - what a running napari has imported already
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    from napari_hitl import io

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    img = io.open_lazy(path)
    t_open = time.perf_counter() - t0
    h, w = img.level_shape(img.n_levels - 1)
    img.read(0, 0, h, w, img.n_levels - 1)
    t_coarse = time.perf_counter() - t0
    cy, cx = img.shape[0] // 2, img.shape[1] // 2
    img.read(cy, cx, cy + TILE, cx + TILE)
    return {"shape": list(img.shape), "levels": [list(img.level_shape(k)) for k in range(img.n_levels)],
            "imports_s": t_import, "open_s": t_open, "open_and_coarsest_level_s": t_coarse,
            "open_coarsest_and_one_full_res_tile_s": time.perf_counter() - t0, "peak_rss_mb": _peak_mb()}


def measure_clicks(path: str, side: int, n_objects: int, n_clicks: int) -> dict:
    """The click robot corrects ``n_objects`` objects spread over the slide, ``n_clicks`` each."""
    import torch

    from napari_hitl import io
    from napari_hitl.evaluate.metrics import iou
    from napari_hitl.interactive.clicknet import ClickNetEngine
    from napari_hitl.interactive.engine import Window
    from napari_hitl.prompts import Click, RegionPrompts
    from napari_hitl.simulate.clicker import next_click

    torch.set_num_threads(1)
    cells = make_cells(side)
    t0 = time.perf_counter()
    engine = ClickNetEngine(threads=1)
    t_load = time.perf_counter() - t0
    rss_engine = _rss_mb()
    img = io.open_lazy(path)
    t0 = time.perf_counter()
    engine.prepare(img)
    t_prepare = time.perf_counter() - t0
    n = cells["cy"].shape[0]
    rng = np.random.default_rng(7)
    picks = [(int(i), int(j)) for i, j in zip(*np.nonzero(cells["present"]))]
    picks = [picks[k] for k in rng.choice(len(picks), size=min(n_objects + 1, len(picks)), replace=False)]
    new_crop_ms, same_crop_ms, final_ious = [], [], []
    i, j = picks.pop()  # torch's first call is slow (allocations): one click first, timed on its own
    y, x = i * CELL + cells["cy"][i, j], j * CELL + cells["cx"][i, j]
    t0 = time.perf_counter()
    engine.predict_window(RegionPrompts(1, [Click(float(y), float(x))]))
    t_first = time.perf_counter() - t0
    for i, j in picks:
        box = (max(i * CELL - CELL, 0), max(j * CELL - CELL, 0), min((i + 2) * CELL, side), min((j + 2) * CELL, side))
        truth = object_mask(cells, i, j, box)
        pred = np.zeros(truth.shape, bool)
        region = RegionPrompts(1)
        for _ in range(n_clicks):
            click = next_click(pred, truth)
            if click is None:
                break
            region.clicks.append(Click(click.y + box[0], click.x + box[1], click.positive))
            if not region.has_positive and not pred.any():
                continue
            before = engine._crop
            t0 = time.perf_counter()
            win = engine.predict_window(region, prev_mask=Window(pred, box[0], box[1]) if pred.any() else None)
            ms = (time.perf_counter() - t0) * 1000.0
            (same_crop_ms if engine._crop == before else new_crop_ms).append(ms)
            pred = win.over(box, -20.0) > 0
        final_ious.append(float(iou(pred, truth)))
    both = new_crop_ms + same_crop_ms

    def stats(v):
        return {"n": len(v), "median_ms": float(np.median(v)) if v else None,
                "p95_ms": float(np.percentile(v, 95)) if v else None, "max_ms": float(max(v)) if v else None}

    return {"engine": "clicknet", "device": engine.device_name, "torch_threads": torch.get_num_threads(),
            "first_crop_px": engine.first_crop, "objects": len(picks), "clicks_per_object": n_clicks,
            "engine_load_s": t_load, "prepare_s": t_prepare, "first_click_after_load_ms": t_first * 1000.0, "clicks_on_prepared_crop": stats(same_crop_ms),
            "clicks_preparing_a_new_crop": stats(new_crop_ms), "all_clicks": stats(both),
            "mean_final_iou": float(np.mean(final_ious)), "rss_after_engine_load_mb": rss_engine,
            "peak_rss_mb": _peak_mb(), "grid_cells": int(n)}


def measure_commit(path: str, side: int, n_commits: int, folder: str) -> dict:
    """A project of the slide (made to count as large whatever its side), then ``n_commits``
    windows of 1024 x 1024 around objects committed as the dock's Accept does (the object's
    pixels, human): ms per commit and per read of such a window, chunks per commit, peak memory."""
    from napari_hitl import io
    from napari_hitl.project import Project

    io.LAZY_PIXELS = min(io.LAZY_PIXELS, side * side - 1)
    cells = make_cells(side)
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    project = Project.create(Path(folder) / "project", path, classes=["background", "cell"])
    t_create = time.perf_counter() - t0
    rng = np.random.default_rng(11)
    picks = [(int(i), int(j)) for i, j in zip(*np.nonzero(cells["present"])) if (i + 1) * CELL <= side
             and (j + 1) * CELL <= side]  # objects wholly inside the slide
    picks = [picks[k] for k in rng.choice(len(picks), size=min(n_commits, len(picks)), replace=False)]
    win = min(1024, side)
    commit_ms, read_ms, chunks = [], [], []
    with project:
        for i, j in picks:
            cy, cx = int(i * CELL + cells["cy"][i, j]), int(j * CELL + cells["cx"][i, j])
            y0, x0 = min(max(cy - win // 2, 0), side - win), min(max(cx - win // 2, 0), side - win)
            mask = object_mask(cells, i, j, (y0, x0, y0 + win, x0 + win))
            oid = project.reserve_ids(project.images[0].name)
            ids = np.where(mask, np.uint32(oid), np.uint32(0))
            t0 = time.perf_counter()
            project.commit_window(project.images[0].name, ids, {oid: 1}, offset=(y0, x0), where=mask)
            commit_ms.append((time.perf_counter() - t0) * 1000.0)
            chunks.append(project.journal()[-1]["chunks"])
            t0 = time.perf_counter()
            back, _, _ = project.read_window(project.images[0].name, y0, x0, y0 + win, x0 + win)
            read_ms.append((time.perf_counter() - t0) * 1000.0)
            if not (back[mask] == oid).all():
                raise RuntimeError(f"window at ({y0}, {x0}) did not read back what was committed")
        # the worst case: a disc across four chunks, its window centred on a chunk corner
        chunk = project.slide_chunk(project.images[0].name)
        corner_ms, corner_read_ms, corner_chunks = [], [], []
        yy, xx = np.mgrid[:win, :win]
        disc = (yy - win // 2) ** 2 + (xx - win // 2) ** 2 < (0.45 * win) ** 2
        corners = [(cy, cx) for cy in range(chunk, side - win // 2 + 1, chunk)
                   for cx in range(chunk, side - win // 2 + 1, chunk) if cy >= win // 2 and cx >= win // 2]
        for cy, cx in [corners[k] for k in rng.choice(len(corners), size=min(5, len(corners)), replace=False)] \
                if corners else []:
            y0, x0 = cy - win // 2, cx - win // 2
            oid = project.reserve_ids(project.images[0].name)
            t0 = time.perf_counter()
            project.commit_window(project.images[0].name, np.where(disc, np.uint32(oid), np.uint32(0)), {oid: 1},
                                  offset=(y0, x0), where=disc)
            corner_ms.append((time.perf_counter() - t0) * 1000.0)
            corner_chunks.append(project.journal()[-1]["chunks"])
            t0 = time.perf_counter()
            project.read_window(project.images[0].name, y0, x0, y0 + win, x0 + win)
            corner_read_ms.append((time.perf_counter() - t0) * 1000.0)
        n_objects = len(project.objects(project.images[0].name))
    label_mb = sum(f.stat().st_size for f in (Path(folder) / "project" / "labels").rglob("*.npz")) / 2 ** 20

    def stats(v):
        return {"n": len(v), "median_ms": float(np.median(v)) if v else None,
                "p95_ms": float(np.percentile(v, 95)) if v else None, "max_ms": float(max(v)) if v else None}

    return {"window": win, "chunk": chunk, "create_s": t_create, "commits": stats(commit_ms),
            "reads": stats(read_ms), "chunks_per_commit_median": float(np.median(chunks)) if chunks else None,
            "commits_across_four_chunks": stats(corner_ms), "reads_across_four_chunks": stats(corner_read_ms),
            "chunks_per_corner_commit": corner_chunks,
            "objects_in_index": n_objects, "label_files_mb": label_mb, "rss_at_start_mb": rss_start,
            "peak_rss_mb": _peak_mb()}


def measure_predict(path: str, out: str) -> dict:
    """The segmentation model over the whole slide with :func:`predict_large` (tiles of 1024,
    overlap 128, one thread): megapixels per second and peak memory."""
    import torch

    from napari_hitl import io
    from napari_hitl.model.segnet import build_segnet, predict_large

    torch.set_num_threads(1)
    model = build_segnet(2, pretrained=True)
    rss_model = _rss_mb()
    with io.open_lazy(path) as img:
        t0 = time.perf_counter()
        predict_large(model, img, out, tile=1024, overlap=128)
        seconds = time.perf_counter() - t0
        h, w = img.shape[:2]
    return {"side": h, "seconds": seconds, "megapixels_per_s": h * w / 1e6 / seconds,
            "rss_after_model_mb": rss_model, "peak_rss_mb": _peak_mb(), "tile": 1024, "overlap": 128,
            "torch_threads": 1}


def _child(kind: str, *args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # napari's measurement lives under napari_hitl.napari (the core never imports napari)
    module = "napari_hitl.napari._bench" if kind == "napari" else "napari_hitl.evaluate.bench_bigimage"
    proc = subprocess.run([sys.executable, "-m", module, kind, *map(str, args)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> int:
    import tempfile

    folder = Path(args.slide_dir or tempfile.gettempdir())
    path = folder / f"napari-hitl-slide-{args.side}.tif"
    fig: dict = {"side": args.side, "slide": str(path), "cpus": os.cpu_count(),
                 "load_average_1min_at_start": os.getloadavg()[0]}
    if not path.is_file():
        t0 = time.perf_counter()
        write_slide(path, args.side)
        print(f"wrote a {args.side} x {args.side} slide ({path.stat().st_size / 2 ** 20:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s: {path}", file=sys.stderr)
    fig["file_mb"] = path.stat().st_size / 2 ** 20
    fig["open"] = _child("open", path)
    o = fig["open"]
    print(f"open: imports {o['imports_s'] * 1000:.0f} ms, then open {o['open_s'] * 1000:.0f} ms; + coarsest level {o['open_and_coarsest_level_s'] * 1000:.0f} ms; "
          f"+ one full-resolution tile {o['open_coarsest_and_one_full_res_tile_s'] * 1000:.0f} ms; "
          f"peak {o['peak_rss_mb']:.0f} MB")
    if args.skip_napari:
        fig["napari"] = {"skipped": "--skip-napari"}
    elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        runs = [_child("napari", path) for _ in range(args.repeat)]
        fig["napari"] = v = {"runs": runs}
        for key in ("first_frame_s", "first_frame_again_s", "zoom_to_full_res_s", "peak_rss_mb"):
            v[f"median_{key}"] = float(np.median([r[key] for r in runs]))
        each = ", ".join(f"{r['first_frame_s']:.2f}" for r in runs)
        print(f"napari ({len(runs)} fresh processes): first frame {v['median_first_frame_s']:.2f} s median "
              f"({each}; level {runs[0]['first_frame_level']}); "
              f"opened again {v['median_first_frame_again_s']:.2f} s; zoom to full resolution "
              f"{v['median_zoom_to_full_res_s']:.2f} s; peak {v['median_peak_rss_mb']:.0f} MB "
              "(target: first view <= 3 s)")
    else:
        fig["napari"] = {"skipped": "no display; run under xvfb-run -a for napari's first frame"}
        print("napari: skipped (no display; run under xvfb-run -a)")
    fig["clicks"] = _child("clicks", path, args.side, args.objects, args.clicks)
    c = fig["clicks"]
    same, new = c["clicks_on_prepared_crop"], c["clicks_preparing_a_new_crop"]

    def ms(v):
        return "n/a" if v is None else f"{v:.0f} ms"

    print(f"clicks ({c['objects']} objects x {c['clicks_per_object']}, {c['device']}, 1 thread): on a prepared "
          f"crop median {ms(same['median_ms'])}, p95 {ms(same['p95_ms'])} (n={same['n']}; target <= 100 ms); "
          f"preparing a new crop median {ms(new['median_ms'])}, p95 {ms(new['p95_ms'])} (n={new['n']}); "
          f"prepare {c['prepare_s'] * 1000:.0f} ms; first click after loading {c['first_click_after_load_ms']:.0f} ms; mean final IoU {c['mean_final_iou']:.3f}; "
          f"peak {c['peak_rss_mb']:.0f} MB (target < 2048 MB)")
    if args.commits:
        with tempfile.TemporaryDirectory(prefix="napari-hitl-commit-", dir=folder) as tmp:
            fig["commit_window"] = w = _child("commit", path, args.side, args.commits, tmp)
        cm, rd = w["commits"], w["reads"]
        print(f"project store ({w['chunk']} px chunks): create {w['create_s'] * 1000:.0f} ms; commit of a "
              f"{w['window']} px click window median {ms(cm['median_ms'])}, p95 {ms(cm['p95_ms'])} (n={cm['n']}, "
              f"{w['chunks_per_commit_median']:.0f} chunks each); read it back median {ms(rd['median_ms'])}; "
              f"a disc across four chunks: commit median {ms(w['commits_across_four_chunks']['median_ms'])}, "
              f"read {ms(w['reads_across_four_chunks']['median_ms'])}; peak {w['peak_rss_mb']:.0f} MB")
    if args.predict_side:
        ppath = folder / f"napari-hitl-slide-{args.predict_side}.tif"
        if not ppath.is_file():
            write_slide(ppath, args.predict_side)
        with tempfile.TemporaryDirectory(prefix="napari-hitl-predict-") as tmp:
            fig["predict_large"] = p = _child("predict", ppath, Path(tmp) / "p.zarr")
        p["estimated_seconds_for_full_side"] = args.side ** 2 / 1e6 / p["megapixels_per_s"]
        print(f"predict_large on a {args.predict_side} x {args.predict_side} slide: {p['megapixels_per_s']:.2f} "
              f"Mpx/s (1 thread), peak {p['peak_rss_mb']:.0f} MB; the {args.side} x {args.side} slide would take "
              f"about {p['estimated_seconds_for_full_side'] / 60:.0f} min")
    fig["load_average_1min_at_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")
    return 0


if __name__ == "__main__":  # a measurement in a fresh process: prints one line of JSON
    kind, rest = sys.argv[1], sys.argv[2:]
    if kind == "open":
        result = measure_open(rest[0])
    elif kind == "clicks":
        result = measure_clicks(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif kind == "commit":
        result = measure_commit(rest[0], int(rest[1]), int(rest[2]), rest[3])
    elif kind == "predict":
        result = measure_predict(rest[0], rest[1])
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps(result))
