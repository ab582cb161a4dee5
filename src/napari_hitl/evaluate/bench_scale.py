"""Scale: predict + rank a generated project on Dask with 1 and 2 workers; client memory; open time.

Prints images per second with one worker and with two (and their ratio), the client's peak
memory growth at a tenth of the images and at all of them (flat is the goal), and the time to
open the project and list its status. The images are generated (noise and blobs, size x size)
so nothing is read from the shared data. ``--big-image`` measures one large image instead
(a generated 20,000 x 20,000 whole-slide TIFF: first view, time per click, peak memory; see
:mod:`napari_hitl.evaluate.bench_bigimage`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=20000, help="images in the project (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--big-image", action="store_true",
                        help="measure one large image (a generated slide) instead of a project of many")
    from napari_hitl.evaluate import bench_bigimage

    bench_bigimage.add_arguments(parser.add_argument_group("--big-image"), with_json=False)


def _make_images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = np.roll(base, (i * 7) % size, axis=0)  # distinct images, generated fast
        Image.fromarray(img).save(folder / f"img{i:06d}.png", compress_level=1)


class _PeakRSS:
    """The client's resident memory, sampled every 20 ms (peak above the start)."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) / 2**20


def run(args) -> int:
    if getattr(args, "big_image", False):
        from napari_hitl.evaluate import bench_bigimage

        return bench_bigimage.run(args)
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, model_bytes, predict_project
    from napari_hitl.app.rank import rank_results
    from napari_hitl.app.session import Session
    from napari_hitl.progress import rate_progress
    from napari_hitl.project import Project

    fig: dict = {"images": args.n, "size": args.size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="napari-hitl-scale-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        _make_images(tmp / "imgs", args.n, args.size)
        print(f"generated {args.n} images of {args.size}x{args.size} in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
        Project.create(tmp / "p", tmp / "imgs").close()
        t = time.perf_counter()
        with Project.open(tmp / "p", readonly=True) as p:
            p.all_counts()
        fig["open_and_status_s"] = time.perf_counter() - t
        print(f"open + status of {args.n} images: {fig['open_and_status_s']:.2f} s")
        for workers in args.workers:
            with Session(Project.open(tmp / "p")) as session, local_cluster(workers) as cluster, \
                    Client(cluster) as client:
                session.project.log("bench_reset")  # each worker count predicts every image afresh
                import sqlite3

                db = sqlite3.connect(session.project.root / "project.db")
                db.execute("DELETE FROM results")
                db.commit()
                db.close()
                tenth = max(1, args.n // 10)
                names = session.names
                client.submit(sum, [1]).result()  # workers up
                model_bytes(session.model)  # the checkpoint exists before memory is watched
                mem = _PeakRSS()
                t = time.perf_counter()
                predict_project(session, client, names[:tenth], progress=rate_progress(f"{workers} worker(s)"))
                peak_tenth = mem.peak
                report = predict_project(session, client, names, progress=rate_progress(f"{workers} worker(s)"))
                seconds = time.perf_counter() - t
                rows = rank_results(names, session.project.results(report.model, features=False),
                                    "local consistency")
                grown = mem.stop()
                run = {"workers": workers, "images_per_s": args.n / seconds,
                       "client_peak_growth_mb_at_tenth": (peak_tenth - mem.start) / 2**20,
                       "client_peak_growth_mb_at_all": grown, "ranked": len(rows),
                       # the target: the client's peak (resident, absolute) at all images within
                       # 1.2x of its peak at a tenth of them
                       "client_peak_mb_at_tenth": peak_tenth / 2**20, "client_peak_mb_at_all": mem.peak / 2**20,
                       "client_peak_ratio_all_to_tenth": mem.peak / peak_tenth}
                fig["runs"].append(run)
                print(f"{workers} worker(s): {run['images_per_s']:.2f} images/s; client memory growth "
                      f"{run['client_peak_growth_mb_at_tenth']:.0f} MB at {tenth} images, {grown:.0f} MB at {args.n}; "
                      f"client peak {run['client_peak_mb_at_tenth']:.0f} MB at {tenth}, "
                      f"{run['client_peak_mb_at_all']:.0f} MB at {args.n} "
                      f"({run['client_peak_ratio_all_to_tenth']:.2f}x, target <= 1.2x)")
    by = {r["workers"]: r["images_per_s"] for r in fig["runs"]}
    if 1 in by and 2 in by:
        fig["ratio_2_to_1"] = by[2] / by[1]
        print(f"2 workers / 1 worker: {fig['ratio_2_to_1']:.2f}x (target >= 1.6x)")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")
    return 0
