"""Project store at scale: create / open / commit / status figures for N images (default 20,000).

Usage: python benchmarks/bench_project.py [--n 20000] [--size 512] [--labelled 2000] [--json out.json]

Prints, for a project of N images of size x size (constant-valued PNGs, so the images are
small on disk): create, open, the median and p95 ms per commit of one full image (atomic,
journalled) on a fresh project and again once ``--labelled`` images hold labels, the status
of every image, and re-open. The labels are ``--objects`` cells (touching ellipses with
ragged edges, an id each), committed as the dock does (an object map, ``commit_instances``);
a class-map commit (``commit_labels``, the robots' path: connected areas become objects) is
timed beside it. Opening must not grow with image size (it reads no image), and
a commit must not grow with the number of labelled images (the target: <= 30 ms median for
512x512 with 20,000 images, 2,000 of them labelled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_hitl.project import Project


def _commit_ms(project: Project, names: list[str], ids: np.ndarray, classes: dict) -> list[float]:
    out = []
    for name in names:
        t = time.perf_counter()
        project.commit_instances(name, ids, classes)
        out.append(1000 * (time.perf_counter() - t))
    return out


def cells(size: int, n: int, rng) -> np.ndarray:
    """An object map of ``n`` ellipses (later ones on top, so many touch) with ragged edges."""
    yy, xx = np.mgrid[:size, :size]
    ids = np.zeros((size, size), np.uint32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 60, size / 20, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 + 0.3 * rng.random((size, size))
        ids[inside] = k
    return ids


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--labelled", type=int, default=2000, help="images labelled before the second commit timing")
    ap.add_argument("--commits", type=int, default=50, help="commits timed each time")
    ap.add_argument("--objects", type=int, default=60, help="cells per image")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-project-"))
    imgs = tmp / "imgs"
    imgs.mkdir()
    arr = np.zeros((args.size, args.size), np.uint8)
    t = time.perf_counter()
    for i in range(args.n):
        Image.fromarray(arr).save(imgs / f"img{i:05d}.png", compress_level=1)
    print(f"wrote {args.n} images of {args.size}x{args.size} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    fig = {"images": args.n, "size": args.size}

    t = time.perf_counter()
    Project.create(tmp / "proj", imgs).close()
    fig["create_s"] = time.perf_counter() - t
    print(f"create (headers only):               {fig['create_s']:8.2f} s")
    t = time.perf_counter()
    p = Project.open(tmp / "proj")
    fig["open_s"] = time.perf_counter() - t
    print(f"open:                                {fig['open_s']:8.3f} s")
    rng = np.random.default_rng(0)
    ids = cells(args.size, args.objects, rng)
    classes = {int(i): 1 for i in np.unique(ids) if i}
    fig["objects_per_image"] = len(classes)
    names = [r.name for r in p.images]
    fresh = _commit_ms(p, names[:args.commits], ids, classes)
    fig["commit_fresh_ms"] = {"median": statistics.median(fresh), "p95": _p95(fresh)}
    print(f"commit, {args.commits} images labelled:     median {statistics.median(fresh):6.1f} ms, "
          f"p95 {_p95(fresh):6.1f} ms per image")
    fill = names[args.commits:args.labelled]
    t = time.perf_counter()
    for k, name in enumerate(fill):
        p.commit_instances(name, ids, classes)
        if k % 200 == 0:
            print(f"  labelling {k}/{len(fill)}", file=sys.stderr)
    print(f"  labelled {args.labelled} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    later = _commit_ms(p, names[args.labelled:args.labelled + args.commits], ids, classes)
    fig["commit_after_labelled_ms"] = {"labelled": args.labelled, "median": statistics.median(later),
                                       "p95": _p95(later)}
    print(f"commit, {args.labelled} images labelled:   median {statistics.median(later):6.1f} ms, "
          f"p95 {_p95(later):6.1f} ms per image")
    semantic = (ids > 0).astype(np.uint8)
    sem = []
    for name in names[args.labelled:args.labelled + args.commits]:  # re-commit as a class map
        t = time.perf_counter()
        p.commit_labels(name, semantic)
        sem.append(1000 * (time.perf_counter() - t))
    fig["commit_class_map_ms"] = {"median": statistics.median(sem), "p95": _p95(sem)}
    print(f"commit of a class map (robots):      median {statistics.median(sem):6.1f} ms, p95 {_p95(sem):6.1f} ms")
    t = time.perf_counter()
    total = p.total_counts()
    fig["status_s"] = time.perf_counter() - t
    print(f"status of all images:                {fig['status_s']:8.3f} s  (human pixels {total.human})")
    p.close()
    t = time.perf_counter()
    Project.open(tmp / "proj").close()
    fig["reopen_s"] = time.perf_counter() - t
    print(f"re-open after commits:               {fig['reopen_s']:8.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")


if __name__ == "__main__":
    main()
