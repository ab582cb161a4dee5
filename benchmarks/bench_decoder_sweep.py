"""Choose the instance decoder's thresholds on a validation part of the dsb2018 pool.

Trains the model on 80% of the pool with full instance labels, predicts the other 20%
(validation) and the held-out images once, sweeps the thresholds of
:func:`napari_hitl.model.instances.decode_instances` on validation (AP over IoU 0.5:0.95),
and reports held-out scores at the default and at the chosen thresholds.
Usage: python benchmarks/bench_decoder_sweep.py ../shared/data/dsb2018 --json out.json
"""

import argparse
import itertools
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--scale", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    from napari_hitl.evaluate.bench_instances import load_instance_dataset, score_instances
    from napari_hitl.model.instances import instances_from_maps
    from napari_hitl.model.segnet import predict_proba_batch, split_instance_maps
    from napari_hitl.model.train import HUMAN, Sample, Trainer, TrainSettings

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_instance_dataset(args.data, args.scale, 0, 15)
    n_val = max(1, round(0.2 * len(ds["pool"])))
    train, val = ds["pool"][:-n_val], ds["pool"][-n_val:]
    samples = [Sample(img, sem, np.full(sem.shape, HUMAN, np.uint8), name, inst) for name, img, sem, inst in train]
    trainer = Trainer(2, settings=TrainSettings(steps=args.steps, batch_size=4, crop=args.crop, checkpoint_every=0))
    t0 = time.perf_counter()
    trainer.train_round(samples)
    print(f"trained {args.steps} steps on {len(train)} images in {time.perf_counter() - t0:.0f}s", flush=True)

    def maps(items):
        outs = predict_proba_batch(trainer.model, [x[1] for x in items], batch_size=4, with_instances=True)
        return [split_instance_maps(p, 2) for p in outs]

    vmaps, hmaps = maps(val), maps(ds["heldout"])

    def score(mp, items, kw):
        preds = [instances_from_maps(*m, **kw)[0] for m in mp]
        return score_instances(preds, [x[3] for x in items], [x[0] for x in items])

    grid = [dict(fg_threshold=f, boundary_threshold=b, seed_threshold=s)
            for f, b, s in itertools.product((0.5, 0.6, 0.7, 0.8), (0.3, 0.5, 0.7), (0.3, 0.5))]
    rows = []
    for kw in grid:
        sc = score(vmaps, val, kw)
        rows.append({**kw, "val_f1": sc["f1"], "val_ap": sc["ap"], "val_aji": sc["aji"]})
        print(kw, f"val F1 {sc['f1']:.3f} AP {sc['ap']:.3f} AJI {sc['aji']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["val_ap"])
    chosen = {k: best[k] for k in ("fg_threshold", "boundary_threshold", "seed_threshold")}
    out = {"train_images": len(train), "val_images": len(val), "heldout_images": len(ds["heldout"]),
           "steps": args.steps, "scale": args.scale, "sweep": rows, "chosen": chosen}
    for name, kw in (("default", {}), ("chosen", chosen)):
        sc = score(hmaps, ds["heldout"], kw)
        out[f"heldout_{name}"] = {k: sc[k] for k in ("f1", "ap", "aji", "worst_image", "worst_f1", "worst_ap")}
        print(f"held-out, {name} thresholds {kw}: F1 {sc['f1']:.3f} AP {sc['ap']:.3f} AJI {sc['aji']:.3f} "
              f"(worst {sc['worst_image'][:10]}: AP {sc['worst_ap']:.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
