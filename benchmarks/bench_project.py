"""Project store at scale: create / open / commit / status figures for N images (default 20,000).

Usage: python benchmarks/bench_project.py [--n 20000] [--size 64]
Prints seconds for each step; opening must not grow with image size (it reads no image).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_hitl.project import Project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-project-"))
    imgs = tmp / "imgs"
    imgs.mkdir()
    arr = np.random.default_rng(0).integers(0, 255, (args.size, args.size), dtype=np.uint8)
    t = time.perf_counter()
    for i in range(args.n):
        Image.fromarray(arr).save(imgs / f"img{i:05d}.png", compress_level=1)
    print(f"wrote {args.n} images of {args.size}x{args.size} in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    Project.create(tmp / "proj", imgs).close()
    print(f"create (headers only):        {time.perf_counter() - t:8.2f} s")
    t = time.perf_counter()
    p = Project.open(tmp / "proj")
    print(f"open:                         {time.perf_counter() - t:8.3f} s")
    labels = np.ones((args.size, args.size), np.uint8)
    t = time.perf_counter()
    for i in range(20):
        p.commit_labels(i, labels)
    print(f"commit (atomic, journalled):  {1000 * (time.perf_counter() - t) / 20:8.1f} ms per image")
    t = time.perf_counter()
    total = p.total_counts()
    print(f"status of all images:         {time.perf_counter() - t:8.3f} s  (human pixels {total.human})")
    p.close()
    t = time.perf_counter()
    Project.open(tmp / "proj").close()
    print(f"re-open after commits:        {time.perf_counter() - t:8.3f} s")


if __name__ == "__main__":
    main()
