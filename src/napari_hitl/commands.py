"""What the ``napari-hitl`` subcommands do, headless (no napari, no Qt).

Each function takes the parsed arguments, prints what it did and returns an exit code.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.project import Project


def _bar(done: int, total: int, label: str = "") -> None:
    """A one-line progress bar on stderr (the CLI's progress display)."""
    width = 30
    filled = int(width * done / max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def create(args) -> int:
    with Project.create(args.project, args.source, classes=args.classes, timelapse=args.timelapse) as project:
        print(f"created {project.root}: {len(project)} image(s), classes "
              f"{', '.join(c.name for c in project.classes)}; images referenced from {project.image_root}")
    return 0


def info(args) -> int:
    with Project.open(args.project, readonly=True) as project:
        print(f"project {project.root}")
        print(f"  images: {len(project)}   classes: {', '.join(f'{c.id}={c.name}' for c in project.classes)}")
        total = project.total_counts()
        for rec in project.images:
            c = project.counts(rec.name)
            frames = f" x{rec.frames}" if rec.is_stack else ""
            print(f"  {rec.name:<32} {rec.shape[0]}x{rec.shape[1]}{frames:<5} {c.status:<8} "
                  f"human {c.human:>9}  machine {c.machine:>9}  pseudo {c.pseudo:>9}")
        print(f"  total pixels: human {total.human}, machine {total.machine}, pseudo {total.pseudo}, "
              f"unlabelled {total.unlabelled}")
        checkpoints = sorted(p.name for p in project.checkpoint_dir.glob("*.pt"))
        print(f"  checkpoints: {', '.join(checkpoints) or 'none'}")
    return 0


def export(args) -> int:
    from napari_hitl.io import export_project

    with Project.open(args.project, readonly=True) as project:
        manifest = export_project(project, args.out, args.format, progress=lambda d, t: _bar(d, t, "export"))
    print(f"wrote {args.format} labels and provenance of every image to {args.out}; manifest {manifest}")
    return 0


def simulate(args) -> int:
    """A simulated person annotates a project with the click robot and an interactive engine.

    For each image, the robot clicks where the engine's mask is most wrong (see
    ``simulate.clicker``) until the IoU target or the click cap; the result is accepted as
    the image's human labels (saved at once). Prints clicks, IoU and time per click.
    """
    from napari_hitl import io, samples
    from napari_hitl.evaluate.metrics import iou
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.prompts import RegionPrompts
    from napari_hitl.simulate.clicker import next_click

    if args.project:
        project = Project.open(args.project)
        if not args.truth:
            raise InputError("--truth is needed with --project: a folder of ground-truth label images "
                             "named like the project's images")
        truth_of = lambda name: io.read_labels(next(Path(args.truth).glob(f"{name}.*")))  # noqa: E731
    else:
        dest = Path(tempfile.mkdtemp(prefix="napari-hitl-simulate-")) / "nuclei-project"
        project = samples.sample_project("nuclei", dest=dest)
        truth_of = lambda name: samples.sample_truth("nuclei", name)  # noqa: E731
    engine = get_engine(args.engine)
    print(f"simulated annotation of {project.root} with the {args.engine!r} engine "
          f"(target IoU {args.target_iou:.2f}, at most {args.max_clicks} clicks per image)")
    total_clicks, ious, click_ms = 0, [], []
    with project:
        for rec in project.images:
            if rec.is_stack:
                print(f"  {rec.name}: time-lapse, skipped (use `napari-hitl bench video`)")
                continue
            truth = truth_of(rec.name) > 0
            t0 = time.perf_counter()
            engine.prepare(project.read_image(rec.name))
            prep_ms = 1000 * (time.perf_counter() - t0)
            region = RegionPrompts(label=1, clicks=[], scribbles=[], extreme=None)
            pred = np.zeros(truth.shape, bool)
            score = 0.0
            for _ in range(args.max_clicks):
                click = next_click(pred, truth)
                if click is None:
                    break
                region.clicks.append(click)
                t0 = time.perf_counter()
                pred = engine.predict_mask(region, prev_mask=pred)
                click_ms.append(1000 * (time.perf_counter() - t0))
                score = iou(pred, truth)
                if score >= args.target_iou:
                    break
            n = len(region.clicks)
            counts = project.commit_labels(rec.name, pred.astype(np.uint8), source="human")
            total_clicks += n
            ious.append(score)
            print(f"  {rec.name:<24} {n:>2} clicks  IoU {score:.3f}  prepare {prep_ms:6.0f} ms  "
                  f"-> saved {counts.human} human pixels")
        print(f"done: {len(ious)} images, {total_clicks} clicks, mean IoU {np.mean(ious):.3f}, "
              f"median {np.median(click_ms):.0f} ms per click; project at {project.root}")
        print(f"reopen it in napari with:  napari {project.root}")
    return 0
