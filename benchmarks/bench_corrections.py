"""Object-by-object correction of a nucleus prediction: clicks per engine against drawing polygons.

Usage: python benchmarks/bench_corrections.py [--data ../shared/data/dsb2018] [--images 8] [--engines graph,clicknet]

Each pool image of the loop benchmark's dsb2018 split gets a plausible model error (outlines one
pixel too wide or too narrow, a tenth of the nuclei missed); the simulated annotator then
corrects it (``simulate.corrections.correct_objects``, target IoU 0.9 per nucleus). Every engine
sees the same errors. Prints clicks against the polygon cost and how the nuclei were handled.
The learned engine (clicknet) was trained on dsb2018 among other sets, so its figure here is
optimistic; the graph engine has no training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_hitl.evaluate.bench_loop import load_dataset
from napari_hitl.interactive.engine import get_engine
from napari_hitl.simulate.corrections import correct_objects
from napari_hitl.simulate.cost import image_clicks


def perturbed(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth`` with outlines a pixel off (grown or shrunk) and a tenth of its objects missed."""
    lab, n = ndimage.label(truth)
    miss = np.isin(lab, rng.choice(np.arange(1, n + 1), max(1, n // 10), replace=False)) if n else False
    grown = rng.random() < 0.5
    pred = ndimage.binary_dilation(truth) if grown else ndimage.binary_erosion(truth)
    return pred & ~miss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/dsb2018")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--engines", default="graph,clicknet")
    ap.add_argument("--scale", type=float, default=0.75, help="as the loop benchmark's dsb2018 run")
    args = ap.parse_args()
    ds = load_dataset(Path(args.data), args.scale, 30, 15, 0)
    pool = ds["pool"][:args.images]
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        engine = get_engine(name)
        rng = np.random.default_rng(0)
        tot = dict(clicks=0, polygons=0, kept=0, clicked=0, drawn=0, erased=0, cut=0)
        t0 = time.perf_counter()
        for _, img, gt in pool:
            truth = gt == 1
            fix = correct_objects(img, perturbed(truth, rng), truth, engine)
            tot["clicks"] += fix.clicks
            tot["polygons"] += image_clicks(gt.astype(np.uint8))
            for k in ("kept", "clicked", "drawn", "erased", "cut"):
                tot[k] += getattr(fix, k)
        print(f"{name:<9} {len(pool)} images: correction {tot['clicks']} clicks vs polygons {tot['polygons']} "
              f"({100 * tot['clicks'] / max(1, tot['polygons']):.0f}%); nuclei kept {tot['kept']}, fixed by clicks "
              f"{tot['clicked']}, drawn {tot['drawn']}; pieces erased {tot['erased']}, cut {tot['cut']}; "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
