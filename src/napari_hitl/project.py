"""The on-disk annotation project: images, labels, provenance, classes, models, journal.

A project is a folder::

    project.json     format, version, class table, where the images are
    images.json      one record per image (name, files, shape, frames) - read once at open
    labels/          <name>.npz per image ({labels, provenance}); a time-lapse has one
                     folder per image and one .npz per frame
    labels/summary.json  provenance counts per image, kept current on every commit
    models/          checkpoints of the trainable model
    cache/           derived data (optical flow, features), safe to delete
    journal.jsonl    append-only log of what happened
    .lock            held (flock) by the one process that has the project open for writing

Every write is atomic (see :func:`napari_hitl.io.atomic_write`), so a process killed at any
moment leaves the last committed state. Human labels are never overwritten by machine
labels. Opening a project reads only the two JSON files, never the images.
"""

from __future__ import annotations

import io as _io
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from napari_hitl import io
from napari_hitl.errors import CorruptFileError, InputError, ProjectError, ProjectLockedError

FORMAT = "napari-hitl-project"
VERSION = 1
PROJECT_FILE = "project.json"

#: provenance codes of a pixel's label
UNLABELLED, HUMAN, MACHINE, PSEUDO = 0, 1, 2, 3
PROVENANCE_NAMES = {UNLABELLED: "unlabelled", HUMAN: "human", MACHINE: "machine", PSEUDO: "pseudo"}
_PROVENANCE_CODES = {v: k for k, v in PROVENANCE_NAMES.items()}

# A colour table that reads well on microscopy and photos (background is transparent black).
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0))


@dataclass(frozen=True)
class ClassInfo:
    """One entry of the class table. Class 0 is the background."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ImageRecord:
    """One image of the project (a time-lapse is one record with ``frames > 1``)."""

    name: str
    files: tuple[str, ...]  # relative to the project's image root; one file, or one per frame
    shape: tuple[int, int]  # (H, W)
    channels: int = 1
    frames: int = 1
    dtype: str = "uint8"

    @property
    def is_stack(self) -> bool:
        return self.frames > 1

    @property
    def label_shape(self) -> tuple[int, ...]:
        return (self.frames, *self.shape) if self.is_stack else tuple(self.shape)

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = list(self.files)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict) -> ImageRecord:
        return cls(name=str(d["name"]), files=tuple(d["files"]), shape=tuple(int(s) for s in d["shape"]),
                   channels=int(d.get("channels", 1)), frames=int(d.get("frames", 1)),
                   dtype=str(d.get("dtype", "uint8")))


@dataclass
class Counts:
    """Pixel counts per provenance, for one image or a whole project."""

    unlabelled: int = 0
    human: int = 0
    machine: int = 0
    pseudo: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    @classmethod
    def of(cls, provenance: np.ndarray) -> Counts:
        bins = np.bincount(provenance.ravel(), minlength=4)
        return cls(int(bins[0]), int(bins[1]), int(bins[2]), int(bins[3]))

    @property
    def total(self) -> int:
        return self.unlabelled + self.human + self.machine + self.pseudo

    @property
    def status(self) -> str:
        """'done' (all human), 'partial' (some human), 'machine' (no human, some machine), 'new'."""
        if self.total and self.human == self.total:
            return "done"
        if self.human:
            return "partial"
        if self.machine or self.pseudo:
            return "machine"
        return "new"


def default_classes(names: Sequence[str] | None = None) -> list[ClassInfo]:
    """A class table from names (background first); default: background + object."""
    names = list(names) if names else ["background", "object"]
    if len(set(names)) != len(names):
        raise InputError(f"class names must be unique, got {names}")
    return [ClassInfo(i, n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]


def _safe_name(rel: str, taken: set[str]) -> str:
    base = Path(rel).stem
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "image"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class _Lock:
    """An exclusive advisory lock on ``.lock``; the OS drops it if the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ProjectLockedError(
                f"project {self.path.parent} is already open for writing by {holder}; "
                "close it there, or open it read-only") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing drops the flock
            self.fh = None


class Project:
    """An annotation project folder. Use :meth:`create` or :meth:`open`; close when done.

    ``Project`` is a context manager. Opened for writing (the default) it holds the
    project's lock; ``readonly=True`` takes no lock and refuses every write.
    """

    def __init__(self, root: Path, meta: dict, records: list[ImageRecord], readonly: bool, lock: _Lock | None):
        self.root = root
        self._meta = meta
        self._records = records
        self._index = {r.name: i for i, r in enumerate(records)}
        self.readonly = readonly
        self._lock = lock
        self._summary: dict[str, dict] | None = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, root: str | os.PathLike, source: str | os.PathLike, *, classes: Sequence[str] | None = None,
               timelapse: bool = False, copy: bool = False, skip_unreadable: bool = False) -> Project:
        """Create a project at ``root`` from a folder of images or one (multi-page) image file.

        ``timelapse=True`` makes the folder's images the frames of one stack. ``copy=True``
        copies the images into the project (self-contained); otherwise they are referenced.
        Unreadable images raise :class:`CorruptFileError` naming them, unless
        ``skip_unreadable`` (then they are listed in the journal and left out).
        """
        root = Path(root).expanduser().resolve()
        source = Path(source).expanduser().resolve()
        if (root / PROJECT_FILE).exists():
            raise ProjectError(f"{root} already holds a project; open it instead")
        if root.exists() and any(root.iterdir()):
            raise ProjectError(f"{root} exists and is not empty; choose a new folder for the project")
        if source.is_file():
            files, image_root = [source], source.parent
        elif source.is_dir():
            files, image_root = io.list_images(source), source
        else:
            raise InputError(f"image source {source} does not exist")
        if not files:
            raise InputError(f"no images ({', '.join(io.IMAGE_SUFFIXES)}) in {source}")

        infos, bad = [], []
        for f in files:
            try:
                infos.append((f, io.image_info(f)))
            except (CorruptFileError, InputError) as err:
                bad.append(str(err))
        if bad and not skip_unreadable:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise CorruptFileError("unreadable images: " + "; ".join(bad[:5]) + more)
        if not infos:
            raise InputError(f"none of the images in {source} could be read")

        taken: set[str] = set()
        if timelapse:
            shapes = {(i.shape, i.channels) for _, i in infos}
            if len(shapes) != 1 or any(i.frames != 1 for _, i in infos):
                raise InputError(f"time-lapse frames in {source} must be single images of one size; "
                                 f"found sizes {sorted(s for s, _ in shapes)}")
            first = infos[0][1]
            records = [ImageRecord(_safe_name(source.name if source.is_dir() else files[0].name, taken),
                                   tuple(f.name for f, _ in infos), first.shape, first.channels,
                                   len(infos), first.dtype)]
        else:
            records = [ImageRecord(_safe_name(f.name, taken), (f.name,), i.shape, i.channels, i.frames, i.dtype)
                       for f, i in infos]

        root.mkdir(parents=True, exist_ok=True)
        for sub in ("labels", "models", "cache"):
            (root / sub).mkdir(exist_ok=True)
        if copy:
            (root / "images").mkdir(exist_ok=True)
            for f, _ in infos:
                shutil.copy2(f, root / "images" / f.name)
            image_root_str = "images"
        else:
            image_root_str = str(image_root)
        meta = {
            "format": FORMAT, "version": VERSION, "name": root.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "image_root": image_root_str,
            "classes": [asdict(c) for c in default_classes(classes)],
        }
        # images.json first, project.json last: a folder with project.json is complete.
        io.atomic_write_json(root / "images.json", [r.to_json() for r in records])
        io.atomic_write_json(root / PROJECT_FILE, meta)
        project = cls.open(root)
        project.log("created", source=str(source), images=len(records), timelapse=timelapse, copied=copy,
                    skipped=bad)
        return project

    @classmethod
    def open(cls, root: str | os.PathLike, *, readonly: bool = False) -> Project:
        """Open an existing project. Reads ``project.json`` and ``images.json`` only."""
        root = Path(root).expanduser().resolve()
        meta_path = root / PROJECT_FILE
        if not root.is_dir():
            raise ProjectError(f"project folder {root} does not exist")
        if not meta_path.is_file():
            raise ProjectError(f"{root} is not a napari-hitl project (no {PROJECT_FILE})")
        meta = io.read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptFileError(f"{meta_path} is not a napari-hitl project file")
        if int(meta.get("version", 0)) > VERSION:
            raise ProjectError(f"{root} was written by a newer napari-hitl (format {meta['version']}); upgrade")
        raw = io.read_json(root / "images.json")
        try:
            records = [ImageRecord.from_json(d) for d in raw]
            classes = [ClassInfo(int(c["id"]), str(c["name"]), tuple(c["color"])) for c in meta["classes"]]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{root / 'images.json'} or {meta_path} has a malformed entry: {err}") from err
        if [c.id for c in classes] != list(range(len(classes))):
            raise CorruptFileError(f"{meta_path}: class ids must be 0..N-1 in order")
        lock = None
        if not readonly:
            lock = _Lock(root / ".lock")
            lock.acquire()
        return cls(root, meta, records, readonly, lock)

    def close(self) -> None:
        """Release the write lock. The project stays consistent whether or not this runs."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return f"Project({str(self.root)!r}, {len(self._records)} images, {mode})"

    # ------------------------------------------------------------------ images
    @property
    def name(self) -> str:
        return str(self._meta.get("name", self.root.name))

    @property
    def images(self) -> list[ImageRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def record(self, image: str | int) -> ImageRecord:
        """The record of an image given by name or index."""
        if isinstance(image, (int, np.integer)):
            if not 0 <= int(image) < len(self._records):
                raise InputError(f"image index {image} is outside 0..{len(self._records) - 1}")
            return self._records[int(image)]
        try:
            return self._records[self._index[image]]
        except KeyError:
            raise InputError(f"no image named {image!r} in project {self.root}") from None

    @property
    def image_root(self) -> Path:
        root = Path(self._meta["image_root"])
        return root if root.is_absolute() else self.root / root

    def image_paths(self, image: str | int) -> list[Path]:
        return [self.image_root / f for f in self.record(image).files]

    def read_image(self, image: str | int, frame: int | None = None) -> np.ndarray:
        """Pixels of an image: ``(H, W[, 3])``, or ``(T, H, W[, 3])`` for a time-lapse."""
        rec = self.record(image)
        paths = self.image_paths(rec.name)
        for p in paths if frame is None or len(paths) == 1 else [paths[frame]]:
            if not p.is_file():
                raise ProjectError(f"image file {p} of {rec.name!r} is missing; was the image folder moved?")
        if len(paths) > 1:
            if frame is not None:
                return self._checked(io.read_image(paths[frame]), rec, paths[frame], frame=True)
            return np.stack([self._checked(io.read_image(p), rec, p, frame=True) for p in paths])
        arr = self._checked(io.read_image(paths[0]), rec, paths[0], frame=False)
        return arr[frame] if frame is not None and rec.is_stack else arr

    @staticmethod
    def _checked(arr: np.ndarray, rec: ImageRecord, path: Path, frame: bool) -> np.ndarray:
        spatial = arr.shape[:2] if (frame or not rec.is_stack) else arr.shape[1:3]
        if tuple(spatial) != tuple(rec.shape):
            raise CorruptFileError(f"{path} is now {spatial[0]}x{spatial[1]} but the project recorded "
                                   f"{rec.shape[0]}x{rec.shape[1]}; the file was changed after the project was made")
        return arr

    # ------------------------------------------------------------------ classes
    @property
    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(int(c["id"]), str(c["name"]), tuple(c["color"])) for c in self._meta["classes"]]

    @property
    def n_classes(self) -> int:
        return len(self._meta["classes"])

    def add_class(self, name: str, color: Sequence[int] | None = None) -> ClassInfo:
        """Append a class to the table (ids are never reused or renumbered)."""
        self._writable()
        if any(c.name == name for c in self.classes):
            raise InputError(f"class {name!r} already exists")
        cid = self.n_classes
        info = ClassInfo(cid, name, tuple(int(v) for v in (color or PALETTE[cid % len(PALETTE)])))
        meta = dict(self._meta, classes=[*self._meta["classes"], asdict(info)])
        io.atomic_write_json(self.root / PROJECT_FILE, meta)
        self._meta = meta
        self.log("class_added", id=cid, name=name)
        return info

    def rename_class(self, cid: int, name: str) -> None:
        self._writable()
        if not 0 <= cid < self.n_classes:
            raise InputError(f"no class with id {cid}")
        classes = [dict(c, name=name) if c["id"] == cid else c for c in self._meta["classes"]]
        meta = dict(self._meta, classes=classes)
        io.atomic_write_json(self.root / PROJECT_FILE, meta)
        self._meta = meta
        self.log("class_renamed", id=cid, name=name)

    # ------------------------------------------------------------------ labels
    def _label_path(self, rec: ImageRecord, frame: int | None) -> Path:
        if rec.is_stack:
            return self.root / "labels" / rec.name / f"t{frame:05d}.npz"
        return self.root / "labels" / f"{rec.name}.npz"

    def _read_plane(self, rec: ImageRecord, frame: int | None) -> tuple[np.ndarray, np.ndarray]:
        path = self._label_path(rec, frame)
        if not path.exists():
            return np.zeros(rec.shape, np.uint16), np.zeros(rec.shape, np.uint8)
        try:
            with np.load(path, allow_pickle=False) as z:
                labels, prov = z["labels"], z["provenance"]
        except Exception as err:  # noqa: BLE001 - any decode failure names the file
            raise CorruptFileError(f"label file {path} is unreadable ({err}); the other images are unaffected. "
                                   "Delete it to start this image's labels afresh.") from err
        if labels.shape != tuple(rec.shape) or prov.shape != tuple(rec.shape):
            raise CorruptFileError(f"label file {path} has shape {labels.shape}, expected {rec.shape}")
        return labels, prov

    def read_labels(self, image: str | int, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels uint16, provenance uint8)`` of an image (zeros where nothing is labelled).

        For a time-lapse without ``frame``, both arrays are ``(T, H, W)``.
        """
        rec = self.record(image)
        if rec.is_stack and frame is None:
            planes = [self._read_plane(rec, t) for t in range(rec.frames)]
            return np.stack([p[0] for p in planes]), np.stack([p[1] for p in planes])
        if rec.is_stack:
            self._check_frame(rec, frame)
        return self._read_plane(rec, frame if rec.is_stack else None)

    def _check_frame(self, rec: ImageRecord, frame: int) -> None:
        if not 0 <= frame < rec.frames:
            raise InputError(f"frame {frame} is outside 0..{rec.frames - 1} of {rec.name!r}")

    def commit_labels(self, image: str | int, labels: np.ndarray, *, source: str | int = HUMAN,
                      where: np.ndarray | None = None, frame: int | None = None) -> Counts:
        """Persist labels for the pixels in ``where`` (default: all) and return the new counts.

        ``source`` is 'human', 'machine' (accepted predictions) or 'pseudo'. Machine and
        pseudo labels never replace a human label: those pixels keep theirs. The write is
        atomic and journalled before this returns.
        """
        self._writable()
        rec = self.record(image)
        code = _PROVENANCE_CODES.get(source, source) if isinstance(source, str) else int(source)
        if code not in (HUMAN, MACHINE, PSEUDO):
            raise InputError(f"source must be 'human', 'machine' or 'pseudo', got {source!r}")
        if rec.is_stack and frame is None:
            shape = rec.label_shape
        else:
            if rec.is_stack:
                self._check_frame(rec, frame)
            shape = tuple(rec.shape)
        labels = io.check_labels(labels, shape, self.n_classes, what=f"labels for {rec.name!r}")
        if where is not None:
            where = np.asarray(where)
            if where.dtype != bool or where.shape != shape:
                raise InputError(f"'where' must be a boolean mask of shape {shape}, got {where.dtype} {where.shape}")
        frames = list(range(rec.frames)) if (rec.is_stack and frame is None) else [frame]
        written = 0
        for i, t in enumerate(frames):
            plane = labels[i] if len(frames) > 1 else labels
            mask = None if where is None else (where[i] if len(frames) > 1 else where)
            written += self._commit_plane(rec, t if rec.is_stack else None, plane, code, mask)
        counts = self._update_summary(rec)
        self.log("commit", image=rec.name, frame=frame, source=PROVENANCE_NAMES[code], pixels=written,
                 human=counts.human)
        return counts

    def _commit_plane(self, rec, frame, plane, code, where) -> int:
        old_labels, old_prov = self._read_plane(rec, frame)
        take = np.ones(rec.shape, bool) if where is None else where.copy()
        if code != HUMAN:
            take &= old_prov != HUMAN  # human labels always win
        new_labels = np.where(take, plane, old_labels).astype(np.uint16)
        new_prov = np.where(take, np.uint8(code), old_prov).astype(np.uint8)
        self._write_plane(rec, frame, new_labels, new_prov)
        return int(take.sum())

    def _write_plane(self, rec, frame, labels, prov) -> None:
        def writer(fh):
            buf = _io.BytesIO()
            np.savez_compressed(buf, labels=labels, provenance=prov)
            fh.write(buf.getvalue())

        io.atomic_write(self._label_path(rec, frame), writer)

    def clear_labels(self, image: str | int, where: np.ndarray | None = None, frame: int | None = None) -> Counts:
        """Forget labels (any provenance) in ``where`` - a person's reset, journalled."""
        self._writable()
        rec = self.record(image)
        frames = list(range(rec.frames)) if (rec.is_stack and frame is None) else [frame]
        for i, t in enumerate(frames):
            t = t if rec.is_stack else None
            labels, prov = self._read_plane(rec, t)
            mask = np.ones(rec.shape, bool) if where is None else np.asarray(where)[i] if len(frames) > 1 else where
            self._write_plane(rec, t, np.where(mask, 0, labels).astype(np.uint16),
                              np.where(mask, 0, prov).astype(np.uint8))
        counts = self._update_summary(rec)
        self.log("clear", image=rec.name, frame=frame)
        return counts

    # ------------------------------------------------------------------ provenance summary
    def _summary_path(self) -> Path:
        return self.root / "labels" / "summary.json"

    def _load_summary(self) -> dict[str, dict]:
        if self._summary is None:
            path = self._summary_path()
            try:
                self._summary = io.read_json(path) if path.exists() else {}
            except CorruptFileError:
                self._summary = {}  # derived data: rebuilt entry by entry from the label files
        return self._summary

    def _stamp(self, rec: ImageRecord) -> list:
        paths = ([self._label_path(rec, t) for t in range(rec.frames)] if rec.is_stack
                 else [self._label_path(rec, None)])
        stamp = []
        for p in paths:
            try:
                st = p.stat()
                stamp.append([st.st_mtime_ns, st.st_size])
            except FileNotFoundError:
                stamp.append(None)
        return stamp

    def _update_summary(self, rec: ImageRecord) -> Counts:
        _, prov = self.read_labels(rec.name)
        counts = Counts.of(prov)
        summary = dict(self._load_summary())
        summary[rec.name] = {"counts": asdict(counts), "stamp": self._stamp(rec)}
        if not self.readonly:
            io.atomic_write_json(self._summary_path(), summary)
        self._summary = summary
        return counts

    def counts(self, image: str | int) -> Counts:
        """Provenance counts of one image, from the summary (recomputed if it is stale)."""
        rec = self.record(image)
        entry = self._load_summary().get(rec.name)
        if entry is None:
            if all(s is None for s in self._stamp(rec)):
                return Counts(unlabelled=int(np.prod(rec.label_shape)))
        elif entry.get("stamp") == self._stamp(rec):
            return Counts(**entry["counts"])
        return self._update_summary(rec)

    def total_counts(self) -> Counts:
        total = Counts()
        for rec in self._records:
            total = total + self.counts(rec.name)
        return total

    # ------------------------------------------------------------------ models
    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "models"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def save_checkpoint(self, state: Any, name: str = "latest") -> Path:
        """Save a torch state (dict of tensors and plain values) atomically as models/<name>.pt."""
        self._writable()
        import torch

        path = self.checkpoint_dir / f"{name}.pt"
        io.atomic_write(path, lambda fh: torch.save(state, fh))
        self.log("checkpoint", name=name)
        return path

    def load_checkpoint(self, name: str = "latest") -> Any | None:
        """Load models/<name>.pt (weights only, no code execution) or None if absent."""
        path = self.checkpoint_dir / f"{name}.pt"
        if not path.exists():
            return None
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise CorruptFileError(f"checkpoint {path} is unreadable ({err}); delete it to retrain") from err

    # ------------------------------------------------------------------ journal
    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    def log(self, event: str, **data: Any) -> None:
        """Append one event to the journal (flushed and fsynced before returning)."""
        if self.readonly:
            return
        entry = {"t": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **data}
        line = json.dumps(entry, default=str) + "\n"
        with open(self.journal_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def journal(self) -> list[dict]:
        """All journal entries; a torn last line (a crash mid-append) is skipped."""
        if not self.journal_path.exists():
            return []
        out = []
        for line in self.journal_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    # ------------------------------------------------------------------ helpers
    def _writable(self) -> None:
        if self.readonly:
            raise ProjectError(f"project {self.root} is open read-only")
        if self._lock is None:
            raise ProjectError(f"project {self.root} is closed")

    def iter_labelled(self, min_human: int = 1) -> Iterator[ImageRecord]:
        """Records with at least ``min_human`` human-labelled pixels."""
        for rec in self._records:
            if self.counts(rec.name).human >= min_human:
                yield rec


def is_project(path: str | os.PathLike) -> bool:
    """True if ``path`` is a project folder."""
    return (Path(path) / PROJECT_FILE).is_file()
