"""The ``napari-hitl`` command: projects, export, the demo, the simulated session, benchmarks.

Benchmarks live in ``napari_hitl.evaluate.bench_<name>`` modules, each exposing
``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "interactive": "napari_hitl.evaluate.bench_interactive",
    "loop": "napari_hitl.evaluate.bench_loop",
    "video": "napari_hitl.evaluate.bench_video",
    "video-cv": "napari_hitl.evaluate.bench_video_cv",
    "crash": "napari_hitl.evaluate.bench_crash",
    "scale": "napari_hitl.evaluate.bench_scale",
}


def _bench_module(name: str):
    try:
        return importlib.import_module(BENCHMARKS[name])
    except ModuleNotFoundError as err:
        if err.name == BENCHMARKS[name]:
            return None
        raise


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-hitl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from napari_hitl.interactive.engine import DEFAULT_ENGINE, available_engines

    parser = argparse.ArgumentParser(
        prog="napari-hitl", description="Human-in-the-loop segmentation for napari: projects, export, the demo, "
        "a simulated annotation session and the benchmarks.")
    parser.add_argument("--version", action="version", version=f"napari-hitl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="open napari with the plugin docked on the sample project "
                       "(or, with --headless / no display, run the simulated session)")
    p.add_argument("--headless", action="store_true", help="run the simulated annotation session instead")
    p.add_argument("--project", help="project folder to open (default: the sample project)")

    p = sub.add_parser("simulate", help="headless: a simulated annotator labels a project and reports")
    p.add_argument("--project", help="project folder (default: a fresh copy of the sample project)")
    p.add_argument("--truth", help="folder of ground-truth label images named like the project's images")
    p.add_argument("--in-place", action="store_true", help="write the robot's labels (marked simulated) into "
                   "--project itself; by default the session runs on a copy")
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=available_engines(),
                   help="interactive engine for the click robot (default: %(default)s)")
    p.add_argument("--engine-option", action="append", default=None, metavar="KEY=VALUE",
                   help="engine option (repeatable); default for the graph engine: method=walker, "
                        "which handles many objects in one mask (nuclei) best")
    p.add_argument("--target-iou", type=float, default=0.9,
                   help="the robot stops clicking on an image at this overlap with the truth (default: %(default)s)")
    p.add_argument("--max-clicks", type=int, default=20, help="most clicks per image (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40,
                   help="training steps of the model's round (default: %(default)s, about a minute on an idle "
                        "2-core CPU)")
    p.add_argument("--delta", type=float, default=0.9,
                   help="confidence above which pixels are pseudo-labelled (default: %(default)s)")

    p = sub.add_parser("create", help="create a project folder from a folder of images")
    p.add_argument("project", help="the new project's folder (must not exist, or be empty)")
    p.add_argument("source", help="folder of images, a multi-page TIFF, or a frame folder with --timelapse")
    p.add_argument("--timelapse", action="store_true", help="treat the folder's images as frames of one stack")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class names, background first (default: background object; a single name gets "
                        "background added before it)")
    p.add_argument("--stuff", nargs="+", default=None, metavar="CLASS",
                   help="classes that are areas, not objects (sky, road): one area per image instead of an id "
                        "per object")
    p.add_argument("--labels-from", default=None, metavar="EXPORT",
                   help="import the labels of an earlier export (its classes, object ids and provenance) into "
                        "the new project, matched to the images by name")

    p = sub.add_parser("predict", help="predict and rank every image as Dask tasks (resumes where it stopped)")
    p.add_argument("project", help="the project's folder")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786); its workers must see the project and "
                        "images at the same paths (default: a local cluster over this machine's cores)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="threads per local worker (default: 1)")
    p.add_argument("--rank", default="local consistency",
                   help="the order printed at the end: local consistency, entropy, margin, diversity, coverage")
    p.add_argument("--top", type=int, default=10, help="how many of the ranked images to print")

    p = sub.add_parser("info", help="summarise a project (images, classes, provenance counts)")
    p.add_argument("project", help="the project's folder")

    p = sub.add_parser("export", help="write all labels, their provenance, the model and a summary of a project")
    p.add_argument("project", help="the project's folder")
    p.add_argument("out", help="the folder to write (new, empty, or an earlier export with --overwrite)")
    p.add_argument("--format", choices=("tiff", "png", "zarr"), default="tiff", help="label file format "
                   "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    p.add_argument("--colour", action="store_true", help="PNG labels indexed with the class colours, so image "
                   "viewers show them (the values stay the labels)")
    p.add_argument("--unlabelled-as-background", action="store_true",
                   help="write 0 where no one labelled (default: 255, or 65535 with more than 255 classes; "
                        "the provenance files mark those pixels with 0 either way)")

    p = sub.add_parser("bench", help="benchmarks that print the figures the issues name")
    bench = p.add_subparsers(dest="benchmark", required=True)
    for name in BENCHMARKS:
        module = _bench_module(name)
        bp = bench.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module else
                              "(not available in this build)")
        if module is not None:
            module.add_arguments(bp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            module = _bench_module(args.benchmark)
            if module is None:
                print(f"benchmark {args.benchmark!r} is not available in this build", file=sys.stderr)
                return 2
            return int(module.run(args) or 0)
        if args.command == "demo":
            return demo(args)
        from napari_hitl import commands

        code = int(getattr(commands, args.command)(args) or 0)
        if args.command == "create" and code == 0:
            _claim_for_napari(args.project)
        return code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except commands_errors() as err:
        print(f"napari-hitl: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `napari-hitl info P | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # full disk, read-only folder, a file where a folder should be
        where = f": {err.filename}" if err.filename else ""
        print(f"napari-hitl: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1


def _claim_for_napari(root) -> None:
    """Register the new project folder in napari's reader preferences, so `napari PROJECT`
    opens it with the dock and asks nothing (the CLI is the composition root: it may)."""
    try:
        from napari_hitl.napari._layers import claim_project_folder

        claim_project_folder(root)
    except Exception as err:  # noqa: BLE001 - napari missing or its settings unwritable: the project is fine
        print(f"note: napari's reader preferences were not updated ({err}); open the project from the dock "
              "or with `napari PROJECT --plugin napari-hitl`", file=sys.stderr)
        return
    print(f"open it with:  napari {root}")


def has_display() -> bool:
    """True if a window can be shown (a desktop session, or macOS / Windows)."""
    import os

    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


HEADLESS_HELP = """No display found, so napari cannot open a window here.
  - On a desktop: run `napari-hitl demo` there (napari opens with the dock and the sample project).
  - Over SSH: use `ssh -X` (X forwarding) so the window opens on your screen.
  - Headless: `napari-hitl simulate --engine graph` (a simulated person annotates the sample
    project), `napari-hitl bench ...` for the benchmarks.
Running the headless session now (`napari-hitl simulate --engine graph`):
"""


def demo(args) -> int:
    """Open napari with the dock and the sample project; without a display, run headless."""
    if args.headless or not has_display():
        if not args.headless:
            print(HEADLESS_HELP)
        from napari_hitl import commands

        # the robot annotates all nuclei of an image as one region: the graph engine's random walker
        # handles many objects in one mask (the learned engine, everyone's default, segments one object
        # a region: IoU 0.35 after 20 clicks here against 0.83)
        print("The robot clicks with the graph engine (random walker): it labels all nuclei of an image as "
              "one region, which the walker handles best.")
        sim = build_parser().parse_args(["simulate", "--engine", "graph"]
                                        + (["--project", args.project] if args.project else []))
        return int(commands.simulate(sim) or 0)
    # The CLI is the composition root: the one core module allowed to start the UI.
    from napari_hitl.napari.app import launch

    return launch(args.project)


def commands_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one line, not a traceback."""
    from napari_hitl.errors import HitlError

    return (HitlError,)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
