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


def main(argv=None) -> int:
    import torch

    from napari_hitl.evaluate.bench_interactive import bench_full_image

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start, stop, configs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    if start < 20:
        raise SystemExit("images 0-19 are the benchmark's: tune on START >= 20")
    for cfg in configs:
        name = cfg.pop("engine")
        t0 = time.time()
        res = bench_full_image(name, Path("../shared/data/camvid/val"), stop - start, options=cfg, first=start)
        print(name, cfg, {b: round(v, 4) for b, v in res["mean_region_iou"].items()},
              f"median solve {res['ms_per_full_solve_median']:.0f} ms", f"{time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
