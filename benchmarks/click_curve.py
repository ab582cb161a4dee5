"""The click model's learning curve across generations, and what it says more training would give.

Reads each generation's validation points (``checkpoints/clicknet_gen*/curve.json``, generation
3's ``validation.json``) and writes one JSON and one PNG: NoC@90 on the held-out 5% of the
training sets (never a benchmark) against training samples seen. Points carry the finishing
they were measured with: generation 2's curve without finishing (the engine had none then),
generation 4's with the default finishing; generation 2's annealed weights were measured both
ways, which ties the two scales together. The projection is a log-linear fit of NoC@90 against
samples over the points without finishing, and is an upper bound on what the same recipe gives:
the flat stretch of generation 2 at a constant learning rate and generation 3's warm restart
say the frozen-encoder recipe has levelled off.

    python benchmarks/click_curve.py --out docs/bench/clicknet_learning_curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def points(repo: Path = REPO) -> list[dict]:
    out = []
    for gen, finishing in ((2, "none"), (4, "default")):
        curve = repo / "checkpoints" / f"clicknet_gen{gen}" / "curve.json"
        if curve.is_file():
            for p in json.loads(curve.read_text())["points"]:
                out.append({"generation": 1 if p["label"].startswith("shipped") and gen == 2 else gen,
                            "label": p["label"], "samples": p["samples_total"], "noc90": p["noc90"],
                            "noc85": p["noc85"], "iou1": p["iou1"], "objects": p["objects"], "finishing": finishing})
    meta = json.loads((repo / "src/napari_hitl/interactive/weights/clicknet.json").read_text())
    res = meta.get("validation_result")
    if res:  # generation 2 annealed (the shipped weights), no finishing
        out.append({"generation": 2, "label": "annealed, shipped", "samples": meta["samples"], "noc90": res["noc90"],
                    "noc85": res["noc85"], "iou1": res["iou1"], "objects": res["objects"], "finishing": "none"})
    g3 = repo / "checkpoints" / "clicknet_gen3" / "validation.json"
    if g3.is_file():
        r = json.loads(g3.read_text())["none"]
        out.append({"generation": 3, "label": "warm restart, annealed (not shipped)", "samples": meta["samples"] + 12800,
                    "noc90": r["noc90"], "noc85": r["noc85"], "iou1": r["iou1"], "objects": r["objects"],
                    "finishing": "none"})
    return sorted(out, key=lambda p: (p["finishing"], p["samples"]))


def projection(pts: list[dict]) -> dict:
    """Log-linear fit NoC@90 = a + b log10(samples) over generation 1 and 2's best points without finishing."""
    best: dict[int, dict] = {}
    for p in pts:
        if p["finishing"] == "none" and p["generation"] in (1, 2):
            if p["generation"] not in best or p["samples"] > best[p["generation"]]["samples"]:
                best[p["generation"]] = p
    anchors = [best[g] for g in sorted(best)]
    if len(anchors) < 2:
        return {}
    x = np.log10([p["samples"] for p in anchors])
    y = np.array([p["noc90"] for p in anchors])
    b = float((y[-1] - y[0]) / (x[-1] - x[0]))
    last = anchors[-1]
    return {"anchors": [(p["label"], p["samples"], p["noc90"]) for p in anchors],
            "noc90_per_tenfold_samples": round(b, 2),
            "samples_for": {f"val NoC@90 {t}": int(last["samples"] * 10 ** ((t - last["noc90"]) / b))
                            for t in (8.0, 7.5, 7.0, 6.5)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "clicknet_learning_curve")
    args = ap.parse_args(argv)
    pts = points()
    proj = projection(pts)
    args.out.with_suffix(".json").write_text(json.dumps({"points": pts, "projection": proj}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for fin, style in (("none", "o-"), ("default", "s-")):
        for gen in sorted({p["generation"] for p in pts}):
            sel = [p for p in pts if p["finishing"] == fin and p["generation"] == gen]
            if sel:
                ax.plot([p["samples"] for p in sel], [p["noc90"] for p in sel], style,
                        label=f"generation {gen}, finishing {fin}")
    if proj:
        xs = np.logspace(np.log10(proj["anchors"][0][1]), np.log10(max(proj["samples_for"].values())), 20)
        a_x, a_y = np.log10(proj["anchors"][-1][1]), proj["anchors"][-1][2]
        ax.plot(xs, a_y + proj["noc90_per_tenfold_samples"] * (np.log10(xs) - a_x), ":", color="gray",
                label="log-linear projection (upper bound)")
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("validation NoC@90 (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=90)
    print(json.dumps(proj, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
