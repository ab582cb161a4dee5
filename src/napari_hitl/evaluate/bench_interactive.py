"""Interactive engines against simulated annotators: NoC@85/90, IoU@k, speed, full-image mode.

Click mode (per dataset folder with images/ and masks/): the click robot clicks on the
engine's errors, up to 20 clicks, the previous mask fed back; we report NoC@85, NoC@90, IoU
after 1/3/5 clicks, the share of objects that never reach 0.9, ms per click (median, p95), ms
to prepare an image, peak memory. ``--instances`` takes a folder of object-id maps (images/ and
labels/, e.g. dsb2018 nuclei): every object is its own target.
Full-image mode (``--full-image``, a folder of label maps such as camvid/val): every connected
area of a class is a region, prompted by its extreme points, then 0, 1, 2 and 4 corrective
scribbles per region on average, each batch of scribbles given to the currently worst
regions; all regions compete for every pixel (canvas); we report mean region IoU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.interactive.engine import DEFAULT_ENGINE, available_engines

MAX_CLICKS = 20
IOU_AT = (1, 3, 5)
SCRIBBLE_BUDGETS = (0, 1, 2, 4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``napari-hitl bench interactive``."""
    parser.add_argument("--data", action="append", required=True,
                        help="dataset folder with images/ and masks/ (repeatable); with --full-image "
                             "a folder with images/ and class-id masks/ (e.g. camvid/val)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=available_engines(),
                        help="engine name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images per dataset")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--full-image", action="store_true", help="full-image mode on multi-region label maps")
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help="click cap for NoC (default 20)")
    parser.add_argument("--ignore-class", type=int, default=11,
                        help="class id ignored in full-image mode (default 11, CamVid void)")
    parser.add_argument("--min-region", type=int, default=64,
                        help="full-image mode: regions smaller than this many pixels are left out (and ignored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resize", type=int, default=None, metavar="N",
                        help="click mode: resize every image and mask to NxN first (speed at a "
                             "given size, e.g. 1024)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="engine constructor option, e.g. --option joint=true (repeatable)")
    parser.add_argument("--instances", action="store_true",
                        help="click mode on a folder with images/ and labels/ of object ids (e.g. dsb2018): "
                             "every object is its own target")
    parser.add_argument("--min-object", type=int, default=30,
                        help="--instances: objects smaller than this many pixels are left out")
    parser.add_argument("--clicknet-heldout", action="store_true",
                        help="--instances: only the images the click model never trained on (its validation split)")


def engine_options(pairs: list[str]) -> dict:
    """Parse KEY=VALUE engine options (values as JSON where possible: numbers, true/false)."""
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"engine option {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _pairs(folder: Path, limit: int | None) -> list[tuple[Path, Path]]:
    from napari_hitl.io import list_images

    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise InputError(f"{folder} must contain images/ and masks/")
    pairs = []
    for img in list_images(img_dir):
        m = mask_dir / (img.stem + ".png")
        if m.is_file():
            pairs.append((img, m))
    if not pairs:
        raise InputError(f"no image/mask pairs found in {folder}")
    return pairs[:limit] if limit else pairs


def _read_mask(path: Path) -> np.ndarray:
    from napari_hitl.io import read_image

    m = read_image(path)
    if m.ndim == 3:
        m = m[..., 0]
    return m


def _peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def _mask_targets(pairs: list[tuple[Path, Path]], resize: int | None):
    """(name, image, [(object name, truth, ignore)]) per (image, mask) pair of an images/ + masks/
    folder: one object per mask (255), GrabCut's unsure band (128) ignored."""
    from napari_hitl.io import read_image

    for img_path, mask_path in pairs:
        image = read_image(img_path)
        m = _read_mask(mask_path)
        if resize:
            import cv2

            image = cv2.resize(image, (resize, resize), interpolation=cv2.INTER_LINEAR)
            m = cv2.resize(m, (resize, resize), interpolation=cv2.INTER_NEAREST)
        ignore = (m > 64) & (m <= 192)
        yield img_path.name, image, [(img_path.name, m > 192, ignore if ignore.any() else None)]


def instance_targets(folder: Path, limit: int | None, min_object: int = 30, heldout: bool = False):
    """(name, image, [(object name, truth, None)]) per image of an images/ + labels/ folder of
    object ids (uint16 PNG): every object of at least ``min_object`` pixels is a target.
    ``heldout``: only the images the click model never trained on (its validation split)."""
    from napari_hitl.io import list_images, read_image

    img_dir, lab_dir = folder / "images", folder / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(f"{folder} must contain images/ and labels/ (object ids) for --instances")
    paths = list_images(img_dir)
    if heldout:
        from napari_hitl.interactive.train_clicknet import TRAIN_SETS, val_split

        name = next((t for t in TRAIN_SETS if folder.name == Path(t).name), None)
        if name is None:
            raise InputError(f"--clicknet-heldout: the click model does not train on {folder.name!r}, "
                             f"every image is held out; drop the flag")
        keep = set(val_split([p.stem for p in paths], name))
        paths = [p for p in paths if p.stem in keep]
    paths = paths[:limit] if limit else paths
    if not paths:
        raise InputError(f"no images in {img_dir}")
    for p in paths:
        lab_path = lab_dir / (p.stem + ".png")
        if not lab_path.is_file():
            raise InputError(f"{p.name} has no object-id map {lab_path}")
        image = read_image(p)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        lab = _read_mask(lab_path)
        areas = np.bincount(lab.ravel().astype(np.int64))
        objs = [(f"{p.stem}#{i}", lab == i, None) for i in range(1, len(areas)) if areas[i] >= min_object]
        if objs:
            yield p.name, image, objs


def bench_clicks(engine_name: str, folder: Path, limit: int | None, max_clicks: int,
                 options: dict | None = None, resize: int | None = None, targets=None) -> dict:
    """Click-mode figures for one dataset folder (``targets``: :func:`instance_targets`' kind of
    iterator; default: one object per images/ + masks/ pair)."""
    from napari_hitl.simulate.clicker import run_clicks

    from napari_hitl.evaluate.metrics import iou_at_k, noc
    from napari_hitl.interactive.engine import get_engine

    if targets is not None and resize:  # the targets come as they are: the figures would say "@NxN" wrongly
        raise InputError("resize applies to images/ + masks/ folders only, not to given targets (--instances)")
    engine = get_engine(engine_name, **(options or {}))
    if targets is None:
        targets = _mask_targets(_pairs(folder, limit), resize)  # listed now: a bad folder fails early
    per_image, all_times, prep_times = [], [], []
    images = 0
    tracemalloc.start()
    t_start = time.perf_counter()
    for _name, image, objects in targets:
        images += 1
        t0 = time.perf_counter()
        engine.prepare(image)
        prep_times.append((time.perf_counter() - t0) * 1000.0)
        for obj_name, truth, ignore in objects:
            run = run_clicks(engine, truth, max_clicks, ignore=ignore, stop_at=0.9, min_clicks=max(IOU_AT))
            ious, times = run.ious, run.ms
            all_times += times
            per_image.append({"image": obj_name, "ious": [round(v, 4) for v in ious],
                              "noc85": noc(ious, 0.85, max_clicks), "noc90": noc(ious, 0.90, max_clicks)})
        el = time.perf_counter() - t_start
        print(f"\r  {folder.name}: {images} images, {len(per_image)} objects  NoC@90 so far "
              f"{np.mean([r['noc90'] for r in per_image]):.2f}  ({el:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    res = {
        "dataset": folder.name + (f"@{resize}x{resize}" if resize else ""), "engine": engine_name,
        "options": dict(options or {}), "images": len(per_image), "photos": images,
        "never_reach_90": float(np.mean([max(r["ious"]) < 0.9 for r in per_image])),
        "noc85": float(np.mean([r["noc85"] for r in per_image])),
        "noc90": float(np.mean([r["noc90"] for r in per_image])),
        "ms_per_click_median": float(np.median(all_times)) if all_times else float("nan"),
        "ms_per_click_p95": float(np.percentile(all_times, 95)) if all_times else float("nan"),
        "ms_prepare": float(np.mean(prep_times)),
        "peak_python_mb": peak_py / 2 ** 20, "peak_rss_mb": _peak_mb(),
        "per_image": per_image,
    }
    for k in IOU_AT:
        res[f"iou@{k}"] = float(np.mean([iou_at_k(r["ious"], k) for r in per_image]))
    return res


def print_click_table(results: list[dict]) -> None:
    head = ("dataset", "engine", "n", "NoC@85", "NoC@90", "IoU@1", "IoU@3", "IoU@5", ">20 @90",
            "ms/click med", "ms/click p95", "ms prepare", "peak MB (py/rss)")
    rows = [head]
    for r in results:
        rows.append((r["dataset"], r["engine"], str(r["images"]), f"{r['noc85']:.2f}", f"{r['noc90']:.2f}",
                     f"{r['iou@1']:.3f}", f"{r['iou@3']:.3f}", f"{r['iou@5']:.3f}",
                     f"{r.get('never_reach_90', float('nan')):.0%}", f"{r['ms_per_click_median']:.0f}", f"{r['ms_per_click_p95']:.0f}", f"{r['ms_prepare']:.0f}",
                     f"{r['peak_python_mb']:.0f}/{r['peak_rss_mb']:.0f}"))
    _print_rows(rows)


def image_regions(classes: np.ndarray, ignore_class: int | None, min_region: int
                  ) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Regions of a class map: (region ids HxW, class of each region, ignore mask).

    Every 8-connected area of one class is a region (ids 1..K); the ``ignore_class`` and regions
    under ``min_region`` pixels are ignored (left out of prompts and scores).
    """
    import cv2

    ids = np.zeros(classes.shape, np.int32)
    ignore = np.zeros(classes.shape, bool)
    region_class = []
    for c in np.unique(classes):
        if ignore_class is not None and c == ignore_class:
            ignore |= classes == c
            continue
        n, lab = cv2.connectedComponents((classes == c).astype(np.uint8), connectivity=8)
        sizes = np.bincount(lab.ravel(), minlength=n)
        for k in range(1, n):
            if sizes[k] < min_region:
                ignore |= lab == k
                continue
            region_class.append(int(c))
            ids[lab == k] = len(region_class)
    return ids, region_class, ignore


def region_ious(pred: np.ndarray, ids: np.ndarray, n: int, ignore: np.ndarray) -> np.ndarray:
    """IoU of each region 1..n between the predicted and true region-id maps, ignore left out."""
    keep = ~ignore
    p, t = pred[keep].astype(np.int64), ids[keep].astype(np.int64)
    cm = np.bincount(t * (n + 1) + p, minlength=(n + 1) ** 2).reshape(n + 1, n + 1)
    inter = np.diag(cm)[1:].astype(float)
    union = cm.sum(0)[1:] + cm.sum(1)[1:] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def full_image_session(engine, image, ids, n, ignore, budgets=SCRIBBLE_BUDGETS, seed=0
                       ) -> tuple[dict[int, np.ndarray], list[float]]:
    """Extreme points for every region, then positive corrective scribbles (the scribble robot
    on each region's misses) up to each budget (per region on average), each batch of n/2
    scribbles going to the currently worst regions. Returns
    ({budget: region IoUs}, ms of each full-image solve)."""
    from napari_hitl.interactive.canvas import segment_full_image
    from napari_hitl.prompts import RegionPrompts
    from napari_hitl.simulate.extreme import extreme_points
    from napari_hitl.simulate.scribbles import next_scribble

    rng = np.random.default_rng(seed)
    regions = [RegionPrompts(k, extreme=extreme_points(ids == k, jitter=3, seed=rng)) for k in range(1, n + 1)]
    times = []
    engine.prepare(image)

    def solve(prev):
        t0 = time.perf_counter()
        out = segment_full_image(engine, None, regions, prev_labels=prev)
        times.append((time.perf_counter() - t0) * 1000.0)
        return out

    pred = solve(None)
    results, given = {}, 0
    batch = max(1, math.ceil(n / 2))
    for budget in sorted(budgets):
        while given < budget * n:
            ious = region_ious(pred, ids, n, ignore)
            take = min(batch, budget * n - given)
            order = [int(k) for k in np.argsort(ious, kind="stable") if ious[k] < 1.0][:take]
            if not order:
                break
            for k in order:
                # full-image corrections are positive ("this is region k"): a false alarm of k is
                # another region's miss, corrected when that region's turn comes
                mine = pred == k + 1
                s = next_scribble(mine, ids == k + 1, ignore | (mine & (ids != k + 1)), seed=rng)
                if s is not None:
                    regions[k].scribbles.append(s)
            given += take
            pred = solve(pred)
        results[budget] = region_ious(pred, ids, n, ignore)
    return results, times


def bench_full_image(engine_name: str, folder: Path, limit: int | None, ignore_class: int | None = 11,
                     min_region: int = 64, seed: int = 0, options: dict | None = None, first: int = 0) -> dict:
    """Full-image-mode figures (mean region IoU per scribble budget) for one label-map folder,
    over ``limit`` images from the ``first`` (0-based; each image's robot seed follows its place)."""
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.io import read_image

    engine = get_engine(engine_name, **(options or {}))
    pairs = _pairs(folder, None if limit is None else first + limit)[first:]
    per_budget: dict[int, list[float]] = {b: [] for b in SCRIBBLE_BUDGETS}
    image_means: dict[int, list[float]] = {b: [] for b in SCRIBBLE_BUDGETS}
    times, n_regions = [], []
    tracemalloc.start()
    t_start = time.perf_counter()
    for i, (img_path, mask_path) in enumerate(pairs, first + 1):
        image = read_image(img_path)
        ids, _, ignore = image_regions(_read_mask(mask_path), ignore_class, min_region)
        n = int(ids.max())
        if n == 0:
            continue
        n_regions.append(n)
        res, t = full_image_session(engine, image, ids, n, ignore, seed=seed + i)
        times += t
        for b, v in res.items():
            per_budget[b] += list(v)
            image_means[b].append(float(np.mean(v)))
        el = time.perf_counter() - t_start
        print(f"\r  {folder.name} full-image: {i - first}/{len(pairs)}  mean region IoU at 2 scribbles so far "
              f"{np.mean(per_budget[2]):.3f}  ({el:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "dataset": folder.name, "engine": engine_name, "mode": "full-image", "images": len(n_regions),
        "regions": int(sum(n_regions)), "min_region_px": min_region,
        "mean_region_iou": {str(b): float(np.mean(v)) for b, v in per_budget.items()},
        "mean_of_image_means": {str(b): float(np.mean(v)) for b, v in image_means.items()},
        "ms_per_full_solve_median": float(np.median(times)) if times else float("nan"),
        "peak_python_mb": peak_py / 2 ** 20, "peak_rss_mb": _peak_mb(),
    }


def print_full_table(results: list[dict]) -> None:
    head = ("dataset", "engine", "images", "regions") + tuple(
        f"mIoU 4xp+{b}scr" for b in SCRIBBLE_BUDGETS) + ("ms/solve med", "peak MB (py/rss)")
    rows = [head]
    for r in results:
        rows.append((r["dataset"], r["engine"], str(r["images"]), str(r["regions"]))
                    + tuple(f"{r['mean_region_iou'][str(b)]:.3f}" for b in SCRIBBLE_BUDGETS)
                    + (f"{r['ms_per_full_solve_median']:.0f}", f"{r['peak_python_mb']:.0f}/{r['peak_rss_mb']:.0f}"))
    _print_rows(rows)


def _print_rows(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run(args) -> int:
    """Run the benchmark named by ``args``; print tables, write JSON if asked."""
    results = []
    options = engine_options(args.option)
    if getattr(args, "instances", False) and (args.resize or args.full_image):
        # neither applies to object-id maps: the figures would carry a label they do not have
        raise InputError(f"--instances takes neither {'--resize' if args.resize else '--full-image'}: "
                         "object-id maps are scored at their own size, in click mode")
    try:
        for d in args.data:
            folder = Path(d)
            if not folder.is_dir():
                raise InputError(f"data folder {folder} does not exist")
            if args.full_image:
                r = bench_full_image(args.engine, folder, args.limit, ignore_class=args.ignore_class,
                                     min_region=args.min_region, seed=args.seed, options=options)
                results.append(r)
                print_full_table([r])
            else:
                targets = None
                if args.instances:
                    targets = instance_targets(folder, args.limit, args.min_object, args.clicknet_heldout)
                r = bench_clicks(args.engine, folder, args.limit, args.max_clicks, options, args.resize, targets)
                results.append(r)
                print_click_table([r])
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0
