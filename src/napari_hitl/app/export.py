"""Export of a project: labels, provenance, the model checkpoint and a human-vs-machine summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from napari_hitl.app.model_host import checkpoint_path


def export_all(project, out, fmt: str, lock=None, ctx=None, overwrite: bool = True, progress=None,
               unlabelled: int | str | None = "auto", colour: bool = False) -> dict:
    """Export every label (``labels/``, ``provenance/``, ``manifest.json``), the model checkpoint
    (``model/``) and ``summary.json`` (human vs machine pixels) into ``out``, all read from one
    snapshot and swapped into place together; returns the summary. The dock and
    ``napari-hitl export`` both call this, so both write the same."""
    from contextlib import nullcontext

    from napari_hitl.io import export_project

    out = Path(out)
    summary = {}

    def add_model_and_summary(stage: Path, manifest: dict) -> None:
        per_image = {e["name"]: e["counts"] for e in manifest["images"]}
        total = manifest["totals"]
        pixels = max(1, sum(total.values()))
        model = None
        ckpt = checkpoint_path(project)
        if ckpt.exists():
            (stage / "model").mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt, stage / "model" / ckpt.name)
            model = out / "model" / ckpt.name
        summary.update({"project": str(project.root), "format": fmt, "manifest": str(out / "manifest.json"),
                        "model": None if model is None else str(model), "pixels": total,
                        "share": {k: v / pixels for k, v in total.items()}, "images": per_image})
        (stage / "summary.json").write_text(json.dumps(summary, indent=2))

    with lock if lock is not None else nullcontext():
        export_project(project, out, fmt, overwrite=overwrite, should_stop=None if ctx is None else ctx.should_stop,
                       progress=progress, extra=add_model_and_summary, unlabelled=unlabelled, colour=colour)
    return summary


def summary_text(summary: dict) -> str:
    """'human 12.0% · machine 3.0% · pseudo 40.0% · unlabelled 45.0%' from an export summary."""
    share = summary["share"]
    keys = ("human", "simulated", "machine", "pseudo", "unlabelled")
    return " · ".join(f"{k} {100 * share[k]:.1f}%" for k in keys if k != "simulated" or share.get(k))
