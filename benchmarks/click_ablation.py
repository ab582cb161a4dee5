"""Ablation of the click engine's levers on the click benchmarks: each lever alone and all together.

For each setting (a name and clicknet options) and each dataset, runs the click robot of
`napari-hitl bench interactive` (20 clicks, NoC@85/90, IoU@1/3/5, the share of objects that
never reach 0.9, ms per click) and writes one JSON per run to --out, then a table of all runs
(``ablation.md`` and ``ablation.json``). Runs already in --out are kept (resumable).

    python benchmarks/click_ablation.py --out docs/bench/click_ablation \
        --data ../shared/data/grabcut --data ../shared/data/berkeley \
        --setting none:snap=0,obey=false,sweep=false,refocus=false --setting default:
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("run_*.json"))]
    head = "| dataset | setting | objects | NoC@85 | NoC@90 | IoU@1 | IoU@3 | IoU@5 | never 0.9 | ms/click med | p95 |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["order"])):
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['images']} | {r['noc85']:.2f} | {r['noc90']:.2f} | "
                     f"{r['iou@1']:.3f} | {r['iou@3']:.3f} | {r['iou@5']:.3f} | {r['never_reach_90']:.0%} | "
                     f"{r['ms_per_click_median']:.0f} | {r['ms_per_click_p95']:.0f} |")
    (out / "ablation.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "per_image"} for r in rows], indent=1))
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    from napari_hitl.evaluate.bench_interactive import bench_clicks, engine_options, instance_targets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True, type=Path)
    ap.add_argument("--setting", action="append", required=True, metavar="NAME:K=V,K=V")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--resize", type=int, default=None)
    ap.add_argument("--instances", action="store_true", help="--data folders hold object-id maps (labels/)")
    ap.add_argument("--clicknet-heldout", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in args.data:
        for order, spec in enumerate(args.setting):
            name, _, opts = spec.partition(":")
            tag = folder.name + (f"@{args.resize}" if args.resize else "") + (f"_first{args.limit}" if args.limit else "")
            path = args.out / f"run_{tag}_{name}.json"
            if path.is_file():
                continue
            options = engine_options([o for o in opts.split(",") if o])
            targets = instance_targets(folder, args.limit, heldout=args.clicknet_heldout) if args.instances else None
            r = bench_clicks("clicknet", folder, args.limit, 20, options, args.resize, targets)
            r.update(setting=name, order=order, dataset=tag)
            path.write_text(json.dumps(r))
            print(f"{tag:18s} {name:14s} NoC@90 {r['noc90']:.2f} NoC@85 {r['noc85']:.2f} IoU@1 {r['iou@1']:.3f}",
                  flush=True)
    print(_table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
