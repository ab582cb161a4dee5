"""kill -9 probe of the project store: writers killed at random moments, a reader all along.

Each iteration forks a writer that commits a time-lapse stack (every frame one value),
saves a checkpoint every third commit and exports every fourth, and kills it with SIGKILL
after a random delay, while a reader thread in this process reads the stack again and
again. After each kill the project is opened for writing (recovery runs) and checked:
every frame holds the same commit (no half-applied commit), the journal holds every commit
the writer acknowledged (no lost entry), the checkpoint loads, the export folder is whole,
and no temporary or unreferenced label file is left. POSIX only (fork, SIGKILL).

    napari-hitl bench crash --iterations 1000
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_hitl.progress import text_progress

FRAMES, SHAPE, VALUES = 6, (12, 14), 5


@dataclass
class CrashReport:
    """What the probe saw; every count but ``iterations``, ``commits`` and ``reads`` must be 0."""

    iterations: int = 0
    commits: int = 0            # commits acknowledged by the writers
    reads: int = 0              # stack reads by the reader while writers ran
    exports_checked: int = 0
    checkpoints_checked: int = 0
    torn_reads: int = 0         # a read that mixed frames of two commits
    half_applied: int = 0       # a stack whose frames hold different commits after a kill
    lost_entries: int = 0       # acknowledged commits missing from the journal
    broken_exports: int = 0
    broken_checkpoints: int = 0
    leftovers: int = 0          # temporary or unreferenced files after recovery
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.torn_reads or self.half_applied or self.lost_entries or self.broken_exports
                    or self.broken_checkpoints or self.leftovers)


def _one_value(a: np.ndarray) -> bool:
    """Whether every element of ``a`` is the same (imports nothing, unlike a first np.unique)."""
    return a.size == 0 or a.min() == a.max()


def _commits(project, image: str) -> int:
    return sum(1 for e in project.journal() if e["event"] == "commit" and e.get("image") == image)


def _writer(root: Path, out: Path, ready: int, acks: int) -> None:
    """The child: commit the stack, save checkpoints and export until killed."""
    import scipy.ndimage  # noqa: F401 - imported before "ready", so kills land in commits, not imports
    import torch

    from napari_hitl.io import export_project
    from napari_hitl.project import Project

    p = Project.open(root)
    k = _commits(p, "frames")
    os.write(ready, b"r")
    while True:
        k += 1
        p.commit_labels("frames", np.full((FRAMES, *SHAPE), k % VALUES + 1, np.uint8))
        os.write(acks, f"{k}\n".encode())
        if k % 3 == 0:
            p.save_checkpoint({"k": torch.tensor(k)}, "crash")
        if k % 4 == 0:
            export_project(p, out, "tiff", overwrite=True)


def make_project(folder: Path) -> Path:
    """A project holding one stack of FRAMES small frames."""
    from PIL import Image

    from napari_hitl.project import Project

    frames = folder / "frames"
    frames.mkdir(parents=True)
    for t in range(FRAMES):
        Image.fromarray(np.full(SHAPE, t, np.uint8)).save(frames / f"f{t:02d}.png")
    Project.create(folder / "p", frames, timelapse=True, classes=[f"c{i}" for i in range(VALUES + 2)]).close()
    return folder / "p"


def _check(root: Path, out: Path, acked: int, report: CrashReport) -> int:
    from napari_hitl.io import read_labels
    from napari_hitl.project import HUMAN, Project

    with Project.open(root) as p:
        labels, prov = p.read_labels("frames")
        n = _commits(p, "frames")
        if not acked <= n <= acked + 1:
            report.lost_entries += max(0, acked - n)
            report.failures.append(f"journal holds {n} commits, {acked} were acknowledged")
        if n and not ((labels == n % VALUES + 1).all() and (prov == HUMAN).all()):
            report.half_applied += 1
            report.failures.append(f"after {n} commits the frames hold {np.unique(labels).tolist()}")
        try:
            ckpt = p.load_checkpoint("crash")
            report.checkpoints_checked += ckpt is not None
            if ckpt is not None and int(ckpt["k"]) > n:
                raise ValueError(f"checkpoint of commit {int(ckpt['k'])} beyond {n}")
        except Exception as err:  # noqa: BLE001 - any failure to load is a broken checkpoint
            report.broken_checkpoints += 1
            report.failures.append(f"checkpoint: {err}")
        referenced = {p.label_file("frames", t) for t in range(FRAMES)} if n else set()
        files = set((p.root / "labels").rglob("*.npz"))
        tmp = list(p.root.rglob("*.tmp"))
        if files != referenced or tmp:
            report.leftovers += len(files ^ referenced) + len(tmp)
            report.failures.append(f"leftovers: {sorted(str(f) for f in (files ^ referenced))[:3]} {tmp[:3]}")
    if (out / "manifest.json").exists():
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            exported = read_labels(out / manifest["images"][0]["labels"])
            if len(np.unique(exported)) != 1 or manifest["totals"]["human"] != FRAMES * SHAPE[0] * SHAPE[1]:
                raise ValueError(f"exported frames hold {np.unique(exported).tolist()}")
            report.exports_checked += 1
        except Exception as err:  # noqa: BLE001
            report.broken_exports += 1
            report.failures.append(f"export: {err}")
    return n


def probe(folder: Path, iterations: int = 100, max_delay: float = 0.12, seed: int = 0,
          progress=None) -> CrashReport:
    """Run the probe in ``folder`` (created); see the module docstring."""
    from napari_hitl.project import Project

    root, out = make_project(folder), folder / "export"
    report = CrashReport()
    reader = Project.open(root, readonly=True)
    stop = threading.Event()
    # held to fork and to check: nothing of the reader's is in flight when the writer forks (an
    # SQLite call, or an import: the first np.unique imports numpy.ma, and a fork in the middle
    # of it left the child blocked for good on that module's lock when it imported scipy)
    gate = threading.Lock()

    def read_all_the_time():
        while not stop.is_set():
            with gate:
                labels, prov = reader.read_labels("frames")
                report.reads += 1
                if not (_one_value(labels) and _one_value(prov)):
                    report.torn_reads += 1
            time.sleep(0.001)

    thread = threading.Thread(target=read_all_the_time, daemon=True)
    thread.start()
    rnd = random.Random(seed)
    acked = 0
    try:
        for i in range(iterations):
            ready_r, ready_w = os.pipe()
            ack_r, ack_w = os.pipe()
            with gate:
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.close(ready_r)
                    os.close(ack_r)
                    _writer(root, out, ready_w, ack_w)
                finally:
                    os._exit(1)
            os.close(ready_w)
            os.close(ack_w)
            if os.read(ready_r, 1) != b"r":
                raise RuntimeError("the writer died before it opened the project")
            time.sleep(rnd.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            with os.fdopen(ack_r) as fh:
                acks = [int(x) for x in fh.read().split()]
            os.close(ready_r)
            report.commits += len(acks)
            acked = max([acked, *acks])
            with gate:
                acked = _check(root, out, acked, report)
            report.iterations = i + 1
            if progress is not None:
                progress(i + 1, iterations)
    finally:
        stop.set()
        thread.join(10)
        reader.close()
    return report


def add_arguments(parser) -> None:
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--max-delay", type=float, default=0.12, help="longest wait before a kill, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here")


def run(args) -> int:
    if not hasattr(os, "fork"):
        print("the crash probe needs fork and SIGKILL (Linux or macOS)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="napari-hitl-crash-") as tmp:
        report = probe(Path(tmp), args.iterations, args.max_delay, args.seed,
                       progress=lambda d, n: text_progress(d, n, "kill -9"))
    d = asdict(report)
    d["seconds"] = round(time.perf_counter() - t, 1)
    for key in ("iterations", "commits", "reads", "exports_checked", "checkpoints_checked", "torn_reads",
                "half_applied", "lost_entries", "broken_exports", "broken_checkpoints", "leftovers", "seconds"):
        print(f"{key:<22} {d[key]}")
    for line in report.failures[:10]:
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(d, indent=1) + "\n")
    return 0 if report.ok else 1
