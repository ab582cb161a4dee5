"""Choose full-image-mode settings on camvid/val images the benchmark does not report on.

`napari-hitl bench interactive --full-image --limit 20` reports on the first 20 images of
camvid/val; this runs the same session (extreme points for every region, then corrective
scribbles up to 1, 2 and 4 per region) on images START..STOP of the same folder, once per
engine setting, and prints the mean region IoU per scribble budget and the median full solve.

    python benchmarks/tune_full_image.py 20 26 \
        '[{"engine": "clicknet", "walker": 1.0}, {"engine": "clicknet", "walker": 0}, {"engine": "graph"}]'

The walker weight of the click engine (``clicknet.WALKER``) was chosen with it; the runs are in
docs/bench/clicknet_walker_tuning.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import torch

    from napari_hitl.evaluate.bench_interactive import _pairs, _read_mask, full_image_session, image_regions
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.io import read_image

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start, stop, configs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    if start < 20:
        raise SystemExit("images 0-19 are the benchmark's: tune on START >= 20")
    pairs = _pairs(Path("../shared/data/camvid/val"), None)[start:stop]
    for cfg in configs:
        name = cfg.pop("engine")
        engine = get_engine(name, **cfg)
        per: dict[int, list[float]] = {}
        times: list[float] = []
        t0 = time.time()
        for i, (img_path, mask_path) in enumerate(pairs):
            ids, _, ignore = image_regions(_read_mask(mask_path), 11, 64)
            n = int(ids.max())
            if n == 0:
                continue
            res, t = full_image_session(engine, read_image(img_path), ids, n, ignore, seed=start + i + 1)
            times += t
            for b, v in res.items():
                per.setdefault(b, []).extend(list(v))
        print(name, cfg, {b: round(float(np.mean(v)), 4) for b, v in per.items()},
              f"median solve {np.median(times):.0f} ms", f"{time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
