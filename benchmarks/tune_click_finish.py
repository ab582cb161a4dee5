"""Choose the click engine's native-resolution finishing (edge snapping, click obedience) on the
validation split of the click model's training sets, never on a benchmark set.

Runs the click robot (20 clicks, as `napari-hitl bench interactive`) with the shipped weights on
the fixed held-out objects the trainer validates on (`train_clicknet.val_objects`), once per
setting, and prints NoC@85/90, IoU@1/3/5 and ms per click (a loaded CPU makes the times
indicative only).

    python benchmarks/tune_click_finish.py --data ../shared/data --objects 150 \
        --setting base: --setting obey:obey=true --setting snap1:snap=1 \
        --json docs/bench/clicknet_finish_tuning.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    from napari_hitl.evaluate.bench_interactive import engine_options
    from napari_hitl.interactive.train_clicknet import load_training_set, val_objects, validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--objects", type=int, default=150)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--setting", action="append", required=True, metavar="NAME:K=V,K=V",
                    help="a named engine setting (repeatable), e.g. snap1:snap=1,obey=true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    items = load_training_set(args.data, split="val", log=lambda m: print(m, file=sys.stderr))
    objects = val_objects(items, args.objects)
    results = {}
    for spec in args.setting:
        name, _, opts = spec.partition(":")
        options = engine_options([o for o in opts.split(",") if o])
        t0 = time.time()
        res = validate(args.weights, items, objects, 20, **options)
        res.update(options=options, seconds=round(time.time() - t0, 1))
        results[name] = res
        print(f"{name:12s} NoC@85 {res['noc85']:.2f} NoC@90 {res['noc90']:.2f} IoU@1 {res['iou1']:.3f} "
              f"IoU@3 {res['iou3']:.3f} IoU@5 {res['iou5']:.3f} fail@90 {res['fail90']:.2f} "
              f"ms {res['ms_median']:.0f}/{res['ms_p95']:.0f}", flush=True)
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.is_file() else {}
        old.update(results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(old, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
