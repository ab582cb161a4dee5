"""Predict & rank a project holding one generated slide (and a few small images) on Dask.

Usage: OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_slide_rank.py [--side 8192] [--json out.json]
       [--stop-at TILES]   (cancel the first run after TILES tiles of the slide, then run again: resume)

A LocalCluster of one worker with one thread predicts the slide tile by tile into the project's
cache (napari_hitl.app.slides) and scores its 1024 px windows; the client saves the results and
ranks the windows beside the images. Prints and saves: wall time of predict + rank, the slide
task's own seconds and window-scoring seconds, the peak memory (ru_maxrss) of the client and of
the worker, the load average before and after, and the first rows of the ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--slide", help="reuse this generated slide (written there when missing)")
    parser.add_argument("--images", type=int, default=4, help="small images beside the slide")
    parser.add_argument("--stop-at", type=int, default=0, help="cancel after this many slide tiles, then resume")
    parser.add_argument("--lazy-pixels", type=int, help="store images above this many pixels as slides "
                        "(default io.LAZY_PIXELS; lower it to try a small --side)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import numpy as np
    from distributed import Client
    from PIL import Image

    from napari_hitl import io
    from napari_hitl.app.batch import local_cluster, model_bytes, predict_project
    from napari_hitl.app.rank import rank_results
    from napari_hitl.app.session import Session
    from napari_hitl.app.slides import read_progress, slide_folder, tile_count, window_results
    from napari_hitl.evaluate.bench_bigimage import write_slide
    from napari_hitl.project import Project

    if args.lazy_pixels:
        io.LAZY_PIXELS = args.lazy_pixels
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="slide_rank_"))
    slide = Path(args.slide) if args.slide else tmp / "slide.tif"
    t = time.perf_counter()
    if not slide.exists():
        slide.parent.mkdir(parents=True, exist_ok=True)
        write_slide(slide, args.side)
    generate_s = time.perf_counter() - t
    imgs = tmp / "imgs"
    imgs.mkdir()
    os.symlink(slide.resolve(), imgs / "slide.tif")
    with io.open_lazy(slide) as lazy:
        for i in range(args.images):
            Image.fromarray(lazy.read(512 * i, 512 * i, 512 * i + 512, 512 * i + 512)).save(imgs / f"small{i}.png")
    fig = {"command": "OMP_NUM_THREADS=1 nice -n 5 python " + " ".join(sys.argv), "side": args.side,
           "slide_generated_s": round(generate_s, 1), "cpus": os.cpu_count(), "load_average_at_start": load0}
    try:
        project = Project.create(tmp / "proj", imgs, classes=["background", "cell"])
        assert project.is_slide("slide"), "the slide is not stored in chunks"
        with Session(project) as session, local_cluster(1, 1) as cluster, Client(cluster) as client:
            token = model_bytes(session.model)[1]
            folder = slide_folder(project.cache_dir / "predictions" / token, "slide")
            tiles = tile_count(project.record("slide").shape)
            runs = []
            t0 = time.perf_counter()
            if args.stop_at:
                r = predict_project(session, client, should_stop=lambda: read_progress(folder) >= args.stop_at)
                runs.append({"seconds": r.seconds, "cancelled": r.cancelled, "tiles_done": read_progress(folder)})
            r = predict_project(session, client)
            runs.append({"seconds": r.seconds, "cancelled": r.cancelled, "predicted": r.predicted,
                         "failed": r.failed, "slide_task": r.slides.get("slide")})
            t_rank = time.perf_counter()
            results = project.results(r.model)
            windows = window_results(project, results)
            rows = rank_results(session.names, results, "local consistency", windows=windows)
            rank_s = time.perf_counter() - t_rank
            wall = time.perf_counter() - t0
            worker_peak = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        fig.update({
            "tiles": tiles, "windows": len(windows), "runs": runs,
            "predict_and_rank_wall_s": round(wall, 1), "rank_s": round(rank_s, 3),
            "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "worker_peak_rss_mb": {k: round(v, 1) for k, v in worker_peak.items()},
            "top_rows": [{"row": x.label, "consistency": round(x.value, 4)} for x in rows[:8]],
            "load_average_at_end": os.getloadavg(), "torch_threads_per_worker": 1, "workers": 1,
            "cache_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1),
        })
        if args.stop_at:
            fig["resume"] = {"stopped_after_tiles": runs[0]["tiles_done"],
                             "tiles_predicted_after_resuming": (runs[-1]["slide_task"] or {}).get("tiles_predicted")}
        print(json.dumps(fig, indent=1, default=str))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(fig, indent=1, default=str) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
