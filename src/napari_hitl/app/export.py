"""Export of a project: labels, provenance, the model checkpoint and a human-vs-machine summary."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from napari_hitl.app.model_host import checkpoint_path


def export_all(project, out, fmt: str, lock, ctx) -> dict:
    """Export every label (``labels/``, ``provenance/``, ``manifest.json``), the model checkpoint
    (``model/``) and ``summary.json`` (human vs machine pixels) into ``out``; returns the summary."""
    from napari_hitl.io import export_project

    out = Path(out)
    with lock:
        manifest = export_project(project, out, fmt, should_stop=ctx.should_stop)
        per_image = {r.name: asdict(project.counts(r.name)) for r in project.images}
    total = {k: sum(v[k] for v in per_image.values()) for k in ("unlabelled", "human", "machine", "pseudo")}
    pixels = max(1, sum(total.values()))
    model = None
    ckpt = checkpoint_path(project)
    if ckpt.exists():
        (out / "model").mkdir(parents=True, exist_ok=True)
        model = out / "model" / ckpt.name
        shutil.copy2(ckpt, model)
    summary = {"project": str(project.root), "format": fmt, "manifest": str(manifest),
               "model": None if model is None else str(model), "pixels": total,
               "share": {k: v / pixels for k, v in total.items()}, "images": per_image}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_text(summary: dict) -> str:
    """'human 12.0% · machine 3.0% · pseudo 40.0% · unlabelled 45.0%' from an export summary."""
    share = summary["share"]
    return " · ".join(f"{k} {100 * share[k]:.1f}%" for k in ("human", "machine", "pseudo", "unlabelled"))
