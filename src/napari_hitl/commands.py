"""What the ``napari-hitl`` subcommands do, headless (no napari, no Qt).

Each function takes the parsed arguments, prints what it did and returns an exit code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.progress import text_progress
from napari_hitl.project import Counts, Project


def create(args) -> int:
    classes = args.classes
    if classes is not None and len(classes) == 1 and classes[0].lower() != "background":
        classes = ["background", *classes]  # class 0 is the background: a lone name would be it
        print(f"note: class 0 is the background, so the classes are: background (0), {classes[1]} (1)")
    stuff = list(args.stuff or ())
    if args.labels_from:
        from napari_hitl.io import read_export_manifest

        manifest = read_export_manifest(args.labels_from)
        theirs = [c["name"] for c in manifest["classes"]]
        if classes is not None and classes != theirs:
            raise InputError(f"--classes {classes} differ from the export's classes {theirs}; leave --classes out")
        classes = theirs
        stuff = [c["name"] for c in manifest["classes"][1:] if c.get("kind") == "stuff"]
    with Project.create(args.project, args.source, classes=classes, stuff=stuff, timelapse=args.timelapse) as project:
        print(f"created {project.root}: {len(project)} image(s), classes "
              f"{', '.join(c.name + (' (stuff)' if c.kind == 'stuff' and c.id else '') for c in project.classes)}"
              f"; images referenced from {project.image_root}")
        if args.labels_from:
            from napari_hitl.io import import_export

            try:
                n = import_export(project, args.labels_from, progress=lambda d, t: text_progress(d, t, "import"))
            except BaseException:  # a half-imported project is no use: remove the new folder
                import shutil

                project.close()
                shutil.rmtree(project.root, ignore_errors=True)
                raise
            print(f"imported the labels of {n} image(s) from {args.labels_from} (object ids, classes and "
                  f"provenance as exported); {len(project.objects())} objects")
    return 0


def info(args) -> int:
    with Project.open(args.project, readonly=True) as project:
        print(f"project {project.root}")
        print(f"  images: {len(project)}   classes: "
              f"{', '.join(f'{c.id}={c.name}' + (' (stuff)' if c.kind == 'stuff' and c.id else '') for c in project.classes)}")
        with project.snapshot():  # one snapshot: the rows add up to the total
            every = project.all_counts()
            objects: dict[str, int] = {}
            for o in project.objects():
                if project.classes[o["class"]].kind == "thing":
                    objects[o["image"]] = objects.get(o["image"], 0) + 1
        total = sum(every.values(), Counts())
        print(f"  {'image':<32} {'width x height':<15} {'status':<10} {'objects':>7}  labelled pixels by: human, "
              "simulated (robot), machine (accepted), pseudo (the model's)")
        for rec in project.images:
            c = every[rec.name]
            size = f"{rec.shape[1]}x{rec.shape[0]}" + (f" x{rec.frames}" if rec.is_stack else "")
            print(f"  {rec.name:<32} {size:<15} {c.status:<10} {objects.get(rec.name, 0):>7}  "
                  f"{c.human:>9} {c.simulated:>9} {c.machine:>9} {c.pseudo:>9}")
        print(f"  objects: {sum(objects.values())} (stuff areas not counted)")
        print(f"  total pixels: human {total.human}, simulated {total.simulated}, machine {total.machine}, "
              f"pseudo {total.pseudo}, "
              f"unlabelled {total.unlabelled}")
        checkpoints = sorted(p.name for p in project.checkpoint_dir.glob("*.pt"))
        print(f"  checkpoints: {', '.join(checkpoints) or 'none'}")
    return 0


def export(args) -> int:
    from napari_hitl.app.export import export_all, summary_text

    with Project.open(args.project, readonly=True) as project:
        summary = export_all(project, args.out, args.format, overwrite=args.overwrite,
                             progress=lambda d, t: text_progress(d, t, "export"),
                             unlabelled=None if args.unlabelled_as_background else "auto", colour=args.colour)
    model = f", the model ({summary['model']})" if summary["model"] else " (no trained model yet)"
    print(f"wrote {args.format} labels and provenance of every image to {args.out}{model}, summary.json and "
          f"manifest.json; pixels: {summary_text(summary)}")
    return 0


def simulate(args) -> int:
    """A simulated person runs one human-in-the-loop session on a project and reports each step.

    With ``--project`` it works on a copy unless ``--in-place``; the robot's labels are saved
    as 'simulated', never as a person's ('human').

    1. clicks: the click robot (``simulate.clicker``) segments the first image with an
       interactive engine until the IoU target or the click cap; saved as simulated labels;
    2. train: the semantic model fine-tunes on those labels (checkpoint in the project);
    3. rank: the model predicts the other images, which are ranked by local consistency;
    steps 2 and 3 are the session jobs the dock runs (:mod:`napari_hitl.app`);
    4. correct: the robot corrects the least consistent image, starting from the model's mask;
    5. pseudo-label: confident pixels of the rest are saved as pseudo labels (never over answers).
    """
    from napari_hitl import io, samples
    from napari_hitl.active.pseudo import PseudoSettings
    from napari_hitl.active.ranking import rank_images
    from napari_hitl.app.jobs import drive
    from napari_hitl.app.model_host import checkpoint_path
    from napari_hitl.app.pseudo import commit_pseudo_labels
    from napari_hitl.app.rank import image_score
    from napari_hitl.app.session import Session
    from napari_hitl.evaluate.metrics import iou
    from napari_hitl.interactive.engine import get_engine
    from napari_hitl.model.train import TrainSettings

    if args.project:
        if not args.truth:
            raise InputError("--truth is needed with --project: a folder of ground-truth label images "
                             "named like the project's images")
        if args.in_place:
            project = Project.open(args.project)
        else:  # the robot's labels never land in the person's project unless asked
            with Project.open(args.project, readonly=True) as original:
                copy = original.copy_to(Path(tempfile.mkdtemp(prefix="napari-hitl-simulate-")) / original.root.name)
            print(f"working on a copy of {original.root} at {copy} (--in-place writes into the project itself)")
            project = Project.open(copy)
        truth_of = lambda name: io.read_labels(next(Path(args.truth).glob(f"{name}.*")))  # noqa: E731
    else:
        dest = Path(tempfile.mkdtemp(prefix="napari-hitl-simulate-")) / "nuclei-project"
        project = samples.sample_project("nuclei", dest=dest)
        truth_of = lambda name: samples.sample_truth("nuclei", name)  # noqa: E731
    options = _engine_options(args.engine_option if args.engine_option is not None
                              else ["method=walker"] if args.engine == "graph" else [])
    engine = get_engine(args.engine, **options)
    pseudo = PseudoSettings(delta=args.delta)
    with Session(project) as session:
        # a large image is never read whole: its ground truth neither (left out, as training leaves it out)
        large = [r.name for r in project.images if project.is_slide(r.name)]
        if large:
            print(f"large images left out (never read whole): {', '.join(large[:5])}"
                  f"{f' and {len(large) - 5} more' if len(large) > 5 else ''}")
        records = [r for r in project.images if not r.is_stack and r.name not in large]
        if len(records) < 2:
            raise InputError(f"{project.root} needs at least two 2-D images for a session")
        truths = {r.name: (truth_of(r.name) > 0).astype(np.uint8) for r in records}
        print(f"simulated session on {project.root}: {len(records)} images, engine {args.engine!r} {options}, "
              f"IoU target {args.target_iou:.2f}, at most {args.max_clicks} clicks per image")
        minutes = (40 + 1.5 * args.steps) / 60  # measured on a 2-core CPU: clicks ~40 s, ~1.5 s a training step
        print(f"This takes about {max(1, round(minutes))} minute(s) on an idle 2-core CPU (longer while other work "
              "runs, less on a GPU). A robot plays the person: it clicks where the mask is wrong, as a person "
              "would.")

        def annotate(name: str, start: np.ndarray | None) -> tuple[int, float]:
            mask, clicks, score, ms = _click_session(engine, project.read_image(name), truths[name].astype(bool),
                                                     start, args.target_iou, args.max_clicks)
            counts = session.commit(name, mask.astype(np.uint8), source="simulated")
            print(f"  {name:<22} {len(clicks):>2} clicks  IoU {score:.3f}  median {ms:5.0f} ms/click  "
                  f"-> saved {counts.simulated} pixels, marked simulated (never shown as a person's)")
            return len(clicks), score

        print("1. clicks on the first image")
        spent, _ = annotate(records[0].name, None)

        print(f"2. training the model on the robot's labels ({args.steps} steps)")
        settings = TrainSettings(steps=args.steps, crop=192, seed=0)
        print(f"   device: {session.model.get(settings).device_description}")
        figures = drive(session.train_job(settings, None)(),
                        progress=lambda step, total, loss: text_progress(step, total, f"   training step (loss {loss:.3f})"))
        print(f"   {figures.steps} steps in {figures.seconds:.0f} s, mean loss of the last steps {figures.loss_last:.3f}; "
              f"checkpoint {checkpoint_path(project)}")

        print("3. predicting and ranking the other images (least consistent first)")
        rest = [r.name for r in records[1:]]
        preds = {name: p[0] for name, p in drive(session.predict_job(rest)()).items()}
        scores = [image_score(i, n, [preds[n]], pseudo.beta(0)) for i, n in enumerate(rest)]
        ranking = rank_images(scores, "consistency", budget=1)
        print("   (consist. = how sure the model is along object edges; the least sure image is asked first)")
        for line in ranking.table().splitlines():
            print("   " + line)
        for name in rest:
            value = iou(preds[name].pred > 0, truths[name] > 0)
            print(f"   model IoU on {name:<22} {value:.3f}  (overlap of the model's nuclei with the true ones, "
                  f"1 = perfect; no one has labelled this image)")

        worst = rest[ranking.picked[0]] if ranking.picked else rest[ranking.order[0]]
        print(f"4. correcting the least consistent image, {worst}, from the model's mask")
        n, _ = annotate(worst, preds[worst].pred > 0)
        spent += n

        print(f"5. pseudo-labels (confidence > {pseudo.delta:.2f}) for the rest")
        for name in rest:
            if name == worst:
                continue
            where, new_labels = commit_pseudo_labels(project, name, preds[name], pseudo.delta)
            counts = project.counts(name)
            if not where.any():
                print(f"   {name:<22} no pixel was confident enough to be labelled by the model")
                continue
            right = float((new_labels[where] == truths[name][where]).mean())
            print(f"   {name:<22} {counts.pseudo / counts.total:6.1%} of pixels labelled by the model, "
                  f"{right:6.1%} of them right")

        total = project.total_counts()
        print(f"done: {spent} clicks; {total.simulated} pixels labelled by the robot, {total.pseudo} by the model "
              f"(pseudo labels), {total.unlabelled} left unlabelled; project at {project.root}")
        print(f"reopen it in napari with:  napari {project.root}")
    return 0


def _engine_options(items: list[str]) -> dict:
    """``["method=walker", "margin=0.4"]`` -> ``{"method": "walker", "margin": 0.4}``."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"engine option {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _click_session(engine, image, truth, start, target, max_clicks):
    """The click robot on one image: returns (mask, clicks, final IoU, median ms per click)."""
    from napari_hitl.evaluate.metrics import iou
    from napari_hitl.simulate.clicker import run_clicks

    engine.prepare(image)
    run = run_clicks(engine, truth, max_clicks, start=start, stop_at=target)
    score = run.final_iou if run.ious else iou(run.mask, truth)
    return run.mask, run.clicks, score, float(np.median(run.ms)) if run.ms else 0.0


def predict(args) -> int:
    """Predict and rank every image on Dask (a LocalCluster here, or ``--scheduler``)."""
    import signal

    from napari_hitl.active.ranking import SCORERS
    from napari_hitl.app.batch import connect, disconnect, predict_project
    from napari_hitl.app.rank import RANKINGS, rank_results
    from napari_hitl.app.session import Session
    from napari_hitl.app.slides import labelled_windows, window_results
    from napari_hitl.progress import rate_progress

    if args.rank not in RANKINGS:
        raise InputError(f"unknown ranking {args.rank!r}; use one of {', '.join(RANKINGS)}")
    stop = []

    def interrupted(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(True)
        print("\nstopping: finished images are kept (Ctrl+C again to quit at once)", flush=True)

    with Session(Project.open(args.project)) as session:
        client, cluster = connect(args.scheduler, args.workers, args.threads_per_worker)
        where = f"the cluster at {args.scheduler}" if args.scheduler else "a local cluster"
        old = signal.signal(signal.SIGINT, interrupted)
        try:
            n = len(client.nthreads())
            slides = sum(1 for r in session.project.images if session.project.is_slide(r.name))
            print(f"predicting {len(session.project)} images" + (f" ({slides} of them slides, counted in tiles)"
                                                                  if slides else "")
                  + f" on {where}: {n} worker(s), {sum(client.nthreads().values())} thread(s)", flush=True)
            report = predict_project(session, client,
                                     progress=rate_progress("predict", unit="images+tiles" if slides else "images"),
                                     should_stop=lambda: bool(stop))
        finally:
            signal.signal(signal.SIGINT, old)
            disconnect(client, cluster)
        names = session.names
        # a ranking by a score needs no features (1.7 KB an image): they stay on disk
        results = session.project.results(report.model, features=RANKINGS[args.rank] not in SCORERS)
        windows = window_results(session.project, results)
        rows = rank_results(names, results, args.rank, windows=windows,
                            labelled_windows=labelled_windows(session.project, windows))
        rate = len(report.predicted) / report.seconds if report.seconds else 0.0
        print(f"model {report.model}: predicted {len(report.predicted)} image(s) in {report.seconds:.1f} s "
              f"({rate:.2f}/s), {report.skipped} already done"
              + (f", {len(report.failed)} failed" if report.failed else "")
              + (" - cancelled: run again to go on" if report.cancelled else ""))
        for name, why in list(report.failed.items())[:5]:
            print(f"  failed: {name}: {why}")
        ranked = [r for r in rows if r.value == r.value]
        print(f"most useful to annotate next ({args.rank}):")
        for r in ranked[:args.top]:
            print(f"  {r.label:<32} {r.value:.3f}{'  (diverse pick)' if r.picked else ''}")
    return 1 if report.failed else 0
