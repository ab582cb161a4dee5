"""The on-disk annotation project: images, labels, provenance, classes, models, journal.

A project is a folder::

    project.json     marker: format and version (a folder is a project once this exists)
    project.db       SQLite index (WAL): settings, class table (thing or stuff), images,
                     which label file is current for each image or frame with its provenance
                     counts, the objects of each plane (class, area, box), the journal
    labels/          label arrays, one .npz ({instances uint32, provenance uint8}) per image
                     or frame, each written once under a new unique name, never changed;
                     a large image's in ``i<id>-t00000.slide/``, one .npz per chunk version
    models/          checkpoints of the trainable model
    cache/           derived data (optical flow, features), safe to delete
    .lock            who holds the project open for writing (the lock is on the folder itself)

A commit writes its new label files first; one SQLite transaction then switches every
pointer of the commit (all frames of a stack), the counts and the journal entry at once, so
a process killed at any moment leaves either the whole commit or none of it. Readers read
inside one transaction (:meth:`Project.snapshot`) and see one commit; replaced label files
are deleted only while no reader holds a snapshot. Before a commit writes a file it notes the
files it may add or replace (``labels/.commit-<token>.json``, renamed ``….done.json`` once its
transaction went through, removed once the replaced files are gone). Opening for writing recovers
from a crash: temporary files and the label files such a note explains that no entry points at
are removed (what an unfinished commit wrote, what a finished one replaced); a label file that no
entry names and no note explains (the index lost its row: a damaged or edited ``project.db``) holds someone's labels, so
it is moved, never deleted, into ``orphaned-labels/<time>/`` and a warning says so. Opening
migrates a project of the
first format (JSON files) or the second (class maps, no instances) once. Labels are
instances: an object id per pixel plus a class per object in the index; the class map
(:meth:`Project.read_labels`) is derived. Every name, path, dtype and value read from the folder is
checked: a project folder is untrusted input. Human labels are never overwritten by
machine labels. Opening reads the index only, never the images.

A large image (one plane above :data:`napari_hitl.io.LAZY_PIXELS` when it is added; listed in
the ``slides`` table with its chunk side, :data:`SLIDE_CHUNK`) is never read whole: its labels
are a grid of chunks, each an .npz of the same two arrays (and every :data:`OVERVIEW_STEP`-th
pixel of them, for zoomed-out views), copy-on-write like a plane. The
``chunks`` table points at each chunk's current file (a chunk without a row holds no labels)
and ``chunk_objects`` holds, per chunk and object, the sums that add up over chunks (area,
coordinate sums, box, pixels per provenance), from which the ``objects`` row of an object that
crosses chunks is rebuilt. :meth:`Project.commit_window` writes new files for the chunks the
window changes, then switches their pointers, their sums, the objects they touch, the counts
and the journal entry in one transaction (a crash leaves the previous commit; opening removes
the orphaned files); :meth:`Project.read_window` reads only the chunks a window covers, each
checked like a plane. A project without a large image keeps the tables empty (a writer adds
them to a project made before them) and stays format 3; one with a large image is format 4
(:data:`SLIDE_VERSION`), so a release that knows only format 3 refuses it rather than taking
its chunk files for a crash's leftovers. Opening checks the three tables and their columns
(a damaged one is named, never re-created empty); a label file that two entries point at
(a tampered index) is refused by every read and commit over it and deleted by none.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from napari_hitl import instances as inst
from napari_hitl import io
from napari_hitl.instances import KINDS, STUFF, THING
from napari_hitl.io import MAX_NAME_BYTES, check_name
from napari_hitl.errors import CommitError, CorruptFileError, InputError, ProjectError, ProjectLockedError

FORMAT = "napari-hitl-project"
VERSION = 3
#: the format of a project that holds a large image (format 3 plus its chunk tables): a release
#: that knows only format 3 refuses it rather than taking its chunk files for leftovers
SLIDE_VERSION = 4
PROJECT_FILE = "project.json"
DB_FILE = "project.db"

#: provenance codes of a pixel's label
UNLABELLED, HUMAN, MACHINE, PSEUDO, SIMULATED = 0, 1, 2, 3, 4
PROVENANCE_NAMES = {UNLABELLED: "unlabelled", HUMAN: "human", MACHINE: "machine", PSEUDO: "pseudo",
                    SIMULATED: "simulated"}
#: codes whose labels machine (accepted or pseudo) labels never replace: a person's, or a
#: simulated person's (``napari-hitl simulate``), never shown as a person's
KEPT = (HUMAN, SIMULATED)
#: codes of labels someone answered for: kept by pseudo-labelling, trained on at full weight
ANSWERED = (HUMAN, MACHINE, SIMULATED)
_PROVENANCE_CODES = {v: k for k, v in PROVENANCE_NAMES.items()}

#: label values are stored as uint16, so class ids run 0..65535
MAX_CLASSES = 65536
_SHORT_PREFIX_BYTES = 90
_LABEL_DTYPE, _INST_DTYPE, _PROV_DTYPE = np.uint16, np.uint32, np.uint8
_IMAGE_DTYPES = {"uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64", "bool"}

# A colour table that reads well on microscopy and photos (background is transparent black).
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0))

_SCHEMA = """
CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, color TEXT NOT NULL,
                     kind TEXT NOT NULL DEFAULT 'thing');
CREATE TABLE images(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, files TEXT NOT NULL,
                    height INTEGER NOT NULL, width INTEGER NOT NULL, channels INTEGER NOT NULL,
                    frames INTEGER NOT NULL, dtype TEXT NOT NULL);
CREATE TABLE planes(image INTEGER NOT NULL, frame INTEGER NOT NULL, file TEXT NOT NULL,
                    unlabelled INTEGER NOT NULL, human INTEGER NOT NULL, machine INTEGER NOT NULL,
                    pseudo INTEGER NOT NULL, simulated INTEGER NOT NULL, PRIMARY KEY(image, frame));
CREATE TABLE objects(image INTEGER NOT NULL, frame INTEGER NOT NULL, id INTEGER NOT NULL,
                     class INTEGER NOT NULL, area INTEGER NOT NULL, provenance INTEGER NOT NULL,
                     y0 INTEGER NOT NULL, x0 INTEGER NOT NULL, y1 INTEGER NOT NULL, x1 INTEGER NOT NULL,
                     cy REAL NOT NULL, cx REAL NOT NULL, PRIMARY KEY(image, frame, id));
CREATE TABLE marks(image INTEGER PRIMARY KEY, next_id INTEGER NOT NULL);
CREATE TABLE results(image INTEGER NOT NULL, model TEXT NOT NULL, scores TEXT NOT NULL, features BLOB NOT NULL,
                     cache TEXT NOT NULL, PRIMARY KEY(image, model));
CREATE TABLE journal(seq INTEGER PRIMARY KEY AUTOINCREMENT, t TEXT NOT NULL, event TEXT NOT NULL,
                     data TEXT NOT NULL);
"""

#: the tables of large images stored in chunks (a project without a large image may lack them:
#: a writer adds them on open, a reader treats their absence as "no large image")
_SLIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS slides(image INTEGER PRIMARY KEY, chunk INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(image INTEGER NOT NULL, frame INTEGER NOT NULL, cy INTEGER NOT NULL,
                                  cx INTEGER NOT NULL, file TEXT NOT NULL, PRIMARY KEY(image, frame, cy, cx));
CREATE TABLE IF NOT EXISTS chunk_objects(image INTEGER NOT NULL, frame INTEGER NOT NULL, cy INTEGER NOT NULL,
                                         cx INTEGER NOT NULL, id INTEGER NOT NULL, area INTEGER NOT NULL,
                                         sy REAL NOT NULL, sx REAL NOT NULL, y0 INTEGER NOT NULL, x0 INTEGER NOT NULL,
                                         y1 INTEGER NOT NULL, x1 INTEGER NOT NULL, p1 INTEGER NOT NULL,
                                         p2 INTEGER NOT NULL, p3 INTEGER NOT NULL, p4 INTEGER NOT NULL,
                                         PRIMARY KEY(image, frame, cy, cx, id));
CREATE INDEX IF NOT EXISTS chunk_objects_by_id ON chunk_objects(image, frame, id);
"""
#: the columns of those tables (checked on opening: see Project._slide_tables)
_SLIDE_COLUMNS = {"slides": ("image", "chunk"), "chunks": ("image", "frame", "cy", "cx", "file"),
                  "chunk_objects": ("image", "frame", "cy", "cx", "id", "area", "sy", "sx", "y0", "x0", "y1", "x1",
                                    "p1", "p2", "p3", "p4")}
#: chunk side of a large image's labels in the project (each chunk a label file of its own)
SLIDE_CHUNK = 1024
#: a chunk file also holds every OVERVIEW_STEP-th pixel of its arrays (``overview_instances``,
#: ``overview_provenance``), so a zoomed-out view reads a small array per chunk, not the chunk
OVERVIEW_STEP = 16
_CHUNK_RANGE = (16, 16384)  # chunk sides a project may record
#: where opening for writing moves label files that no entry of the index names and no
#: unfinished commit explains (see :meth:`Project._recover`): kept aside, never deleted
ORPHANS_DIR = "orphaned-labels"
#: a commit's note of the label files it may add or replace, in ``labels/`` (see :meth:`Project._intend`)
_INTENT_GLOB = ".commit-*.json"
_DONE_SUFFIX = ".done.json"  # a note renamed so once its commit's transaction went through


@dataclass(frozen=True)
class ClassInfo:
    """One entry of the class table. Class 0 is the background. A "thing" class has objects
    (an id each); a "stuff" class (background, sky) is one area per image."""

    id: int
    name: str
    color: tuple[int, int, int]
    kind: str = THING


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
    simulated: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    @classmethod
    def of(cls, provenance: np.ndarray) -> Counts:
        bins = np.bincount(provenance.ravel(), minlength=5)
        return cls(*(int(b) for b in bins[:5]))

    @property
    def total(self) -> int:
        return self.unlabelled + self.human + self.machine + self.pseudo + self.simulated

    @property
    def status(self) -> str:
        """'done' (all human), 'partial' (some human), 'simulated' (a robot's labels, no human),
        'machine' (no human, some machine), 'new'."""
        if self.total and self.human == self.total:
            return "done"
        if self.human:
            return "partial"
        if self.simulated:
            return "simulated"
        if self.machine or self.pseudo:
            return "machine"
        return "new"


# ---------------------------------------------------------------------------- names and paths

def short_name(base: str) -> str:
    """``base`` if it fits a name, else a stable short form: its start and a hash of all of it."""
    raw = base.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_NAME_BYTES:
        return base
    head = raw[:_SHORT_PREFIX_BYTES].decode("utf-8", "ignore")
    return f"{head}-{hashlib.sha1(raw).hexdigest()[:10]}"


def _safe_name(rel: str, taken: set[str]) -> str:
    base = Path(rel).stem
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base).lstrip(".") or "image"
    base = short_name(base)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _inside(root: Path, rel: str, what: str, where: Path) -> Path:
    """``root / rel`` for a relative path that stays inside ``root`` (checked lexically)."""
    p = PurePosixPath(str(rel).replace("\\", "/"))
    if not str(rel) or p.is_absolute() or re.match(r"^[A-Za-z]:", str(rel)) or any(
            part in ("..", "") for part in p.parts) or "\x00" in str(rel):
        raise CorruptFileError(f"{where}: {what} {str(rel)!r} points outside its folder")
    return root.joinpath(*p.parts)


def default_classes(names: Sequence[str] | None = None, stuff: Sequence[str] = ()) -> list[ClassInfo]:
    """A class table from names (background first); default: background + object. Classes
    named in ``stuff`` (and the background) are stuff, the others things (objects)."""
    names = list(names) if names else ["background", "object"]
    if len(names) < 2:
        raise InputError(f"a project needs a background class first and at least one class to annotate; got only "
                         f"{names}: give e.g. 'background {names[0] if names else 'object'}'")
    if len(set(names)) != len(names):
        raise InputError(f"class names must be unique, got {names}")
    if any(n.strip().lower() == "background" for n in names[1:]):
        raise InputError(f"class 0 is the background: list 'background' first, got {names}")
    if len(names) > MAX_CLASSES:
        raise InputError(f"at most {MAX_CLASSES} classes fit the label type, got {len(names)}")
    for n in names:
        check_name(n, "class name", path_part=False)
    unknown = sorted(set(stuff) - set(names))
    if unknown:
        raise InputError(f"stuff classes {unknown} are not among the classes {names}")
    return [ClassInfo(i, n, PALETTE[i % len(PALETTE)], STUFF if (i == 0 or n in stuff) else THING)
            for i, n in enumerate(names)]


# ---------------------------------------------------------------------------- locks

def _flock(fd: int, exclusive: bool, block: bool) -> bool:
    """flock ``fd``; False if ``block`` is off and someone else holds a conflicting lock."""
    if os.name == "nt":  # pragma: no cover - Windows has no flock; locks are advisory there
        return True
    import fcntl

    flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if block else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        return False
    return True


def _funlock(fd: int) -> None:
    if os.name != "nt":
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


class _Lock:
    """The writer's exclusive lock, on the project folder itself (deleting ``.lock`` cannot
    release it); ``.lock`` only says who holds it. The OS drops it if the process dies."""

    def __init__(self, root: Path):
        self.root = root
        self.fd: int | None = None

    def acquire(self) -> None:
        info = self.root / ".lock"
        if os.name == "nt":  # pragma: no cover - Windows: lock the info file
            fd = os.open(info, os.O_RDWR | os.O_CREAT)
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                os.close(fd)
                raise ProjectLockedError(f"project {self.root} is already open for writing") from None
        else:
            fd = os.open(self.root, os.O_RDONLY)
            if not _flock(fd, exclusive=True, block=False):
                os.close(fd)
                try:
                    holder = info.read_text().strip() or "another process"
                except OSError:
                    holder = "another process"
                raise ProjectLockedError(
                    f"project {self.root} is already open for writing by {holder}; "
                    "close it there, or open it read-only") from None
        self.fd = fd
        try:
            io.atomic_write_bytes(info, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # informative only

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None


# ---------------------------------------------------------------------------- the project

class Project:
    """An annotation project folder. Use :meth:`create` or :meth:`open`; close when done.

    ``Project`` is a context manager. Opened for writing (the default) it holds the
    project's lock; ``readonly=True`` takes no lock and refuses every write.
    """

    def __init__(self, root: Path, db: sqlite3.Connection, readonly: bool, lock: _Lock | None):
        self.root = root
        self.readonly = readonly
        self._lock = lock
        self._db = db                      # the writer's connection (reads too when read-only)
        self._mutex = threading.RLock()    # one thread at a time on the writer's connection
        self._local = threading.local()    # a thread's open snapshot
        self._garbage: list[Path] = []     # replaced label files not yet deleted
        self._intents: list[Path] = []     # the notes of committed commits, removed with their garbage
        self._readers: list[tuple[sqlite3.Connection, int]] = []  # every thread's read connection
        self._sampled: OrderedDict[tuple[str, int], tuple] = OrderedDict()  # see _sampled_chunk
        self._sampled_bytes = 0
        self._load_index()

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, root: str | os.PathLike, source: str | os.PathLike, *, classes: Sequence[str] | None = None,
               stuff: Sequence[str] = (), timelapse: bool = False, copy: bool = False,
               skip_unreadable: bool = False) -> Project:
        """Create a project at ``root`` from a folder of images or one (multi-page) image file.

        ``timelapse=True`` makes the folder's images the frames of one stack. ``copy=True``
        copies the images into the project (self-contained); otherwise they are referenced.
        Classes named in ``stuff`` are areas, not objects (sky, road); the others are objects.
        Unreadable images raise :class:`CorruptFileError` naming them, unless
        ``skip_unreadable`` (then they are listed in the journal and left out). A folder left
        by a creation that was interrupted is cleared and created again.
        """
        root = Path(root).expanduser().resolve()
        source = Path(source).expanduser().resolve()
        if (root / PROJECT_FILE).exists():
            raise ProjectError(f"{root} already holds a project; open it instead")
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root} is a file; choose a new folder for the project")
        if root.exists() and any(root.iterdir()) and not _half_created(root):
            raise ProjectError(f"{root} exists and is not empty; choose a new folder for the project")
        if source.is_file():
            files, image_root = [source], source.parent
        elif source.is_dir():
            files, image_root = io.list_images(source), source
        else:
            raise InputError(f"image source {source} does not exist")
        if not files:
            raise InputError(f"no images ({', '.join(io.IMAGE_SUFFIXES)}) in {source}")
        class_table = default_classes(classes, stuff)

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

        if root.exists():
            _clear_half_created(root)
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
        settings = {"name": root.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "image_root": image_root_str}
        large = [(i, SLIDE_CHUNK) for i, r in enumerate(records) if is_large_record(r)]
        _build_db(root / DB_FILE, settings, class_table, records, planes=[], objects=[],
                  journal=[_entry("created", source=str(source), images=len(records), timelapse=timelapse,
                                  copied=copy, skipped=bad, large=[records[i].name for i, _ in large])],
                  slides={"slides": large})
        # project.json last: a folder with project.json is a complete project.
        io.atomic_write_json(root / PROJECT_FILE, {"format": FORMAT, "version": SLIDE_VERSION if large else VERSION})
        return cls.open(root)

    @classmethod
    def open(cls, root: str | os.PathLike, *, readonly: bool = False) -> Project:
        """Open an existing project: reads its index, never the images.

        Opened for writing, leftovers of a crash are cleaned up first; a project of the first
        format is migrated once (read-only opening migrates too when no one holds the lock).
        """
        root = Path(root).expanduser().resolve()
        meta_path = root / PROJECT_FILE
        if not root.is_dir():
            raise ProjectError(f"project folder {root} does not exist")
        if not meta_path.is_file():
            if _half_created(root):
                raise ProjectError(f"{root} holds a project whose creation was interrupted; "
                                   "create it again (napari-hitl create)")
            raise ProjectError(f"{root} is not a napari-hitl project (no {PROJECT_FILE})")
        meta = io.read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptFileError(f"{meta_path} is not a napari-hitl project file")
        try:
            version = int(meta.get("version", 0))
        except (TypeError, ValueError):
            raise CorruptFileError(f"{meta_path}: version {meta.get('version')!r} is not a number") from None
        if version > SLIDE_VERSION:
            raise ProjectError(f"{root} was written by a newer napari-hitl (format {version}); upgrade")
        if version < VERSION:
            if version not in (1, 2):
                raise CorruptFileError(f"{meta_path}: unknown format version {version}")
            lock = _Lock(root)
            lock.acquire()
            try:
                _migrate(root, meta, version)
            except BaseException:
                lock.release()
                raise
            if readonly:
                lock.release()
            if not readonly:
                return cls._open_db(root, readonly=False, lock=lock)
        if readonly:
            return cls._open_db(root, readonly=True, lock=None)
        lock = _Lock(root)
        lock.acquire()
        return cls._open_db(root, readonly=False, lock=lock)

    @classmethod
    def _open_db(cls, root: Path, readonly: bool, lock: _Lock | None) -> Project:
        path = root / DB_FILE
        if not path.is_file():
            if lock:
                lock.release()
            raise CorruptFileError(f"{path} is missing; the project's index is gone (restore it from a backup)")
        try:
            db = _connect(path, readonly)
            project = cls(root, db, readonly, lock)
        except BaseException:
            if lock:
                lock.release()
            raise
        if not readonly:
            if not db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'chunk_objects_by_id'").fetchone()[0]:
                with project._transaction("adding the tables of large images") as tx:  # a project made before them
                    for statement in filter(str.strip, _SLIDE_SCHEMA.split(";")):
                        tx.execute(statement)
            project._recover()
        return project

    def close(self) -> None:
        """Release the write lock. The project stays consistent whether or not this runs."""
        if self._lock is not None:
            self._collect()
            self._lock.release()
            self._lock = None
        if self._db is not None:
            self._db.close()
            self._db = None
        with self._mutex:
            for conn, fd in self._readers:
                conn.close()
                os.close(fd)
            self._readers = []
        self._local = threading.local()
        self._sampled.clear()
        self._sampled_bytes = 0

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return f"Project({str(self.root)!r}, {len(self._records)} images, {mode})"

    # ------------------------------------------------------------------ index
    def _load_index(self) -> None:
        """Read and check settings, classes and image records (untrusted: every field checked)."""
        where = self.root / DB_FILE
        try:
            settings = dict(self._db.execute("SELECT key, value FROM settings"))
            rows = self._db.execute("SELECT id, name, files, height, width, channels, frames, dtype "
                                    "FROM images ORDER BY id").fetchall()
        except sqlite3.DatabaseError as err:
            raise CorruptFileError(f"{where} is not a readable project index ({err})") from err
        if "image_root" not in settings:
            raise CorruptFileError(f"{where} has no image root")
        self._settings = settings
        self._classes = self._read_classes(self._db)
        records, ids = [], []
        for iid, name, files, h, w, c, t, dtype in rows:
            try:
                check_name(name)
                files = json.loads(files)
                if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                    raise ValueError("files must be a list of names")
                for f in files:
                    _inside(Path("."), f, "image file", where)
                if not all(isinstance(v, int) and v > 0 for v in (h, w, c, t)) or c > 4:
                    raise ValueError(f"shape {h}x{w}, {c} channels, {t} frames")
                if len(files) not in (1, t) or dtype not in _IMAGE_DTYPES:
                    raise ValueError(f"{len(files)} files for {t} frames, dtype {dtype!r}")
            except (InputError, ValueError, TypeError) as err:
                raise CorruptFileError(f"{where}: image {str(name)[:60]!r} has a malformed entry: {err}") from err
            records.append(ImageRecord(name, tuple(files), (h, w), c, t, dtype))
            ids.append(iid)
        self._records = records
        self._index = {r.name: i for i, r in enumerate(records)}
        self._ids = {r.name: iid for r, iid in zip(records, ids)}
        self._slides = self._read_slides(dict(zip(ids, records)))

    def _slide_tables(self) -> bool:
        """Whether the index has the tables of large images, each with its columns (checked: a
        tampered index is named, table by table, instead of failing in SQLite later). A project
        made before them has none of them (a writer adds them), unless its labels folder holds
        chunk folders: then they were removed, and adding them empty would lose those labels."""
        where = self.root / DB_FILE
        have = {}
        for table, columns in _SLIDE_COLUMNS.items():
            found = tuple(r[1] for r in self._db.execute(f"PRAGMA table_info({table})"))
            if found:
                have[table] = found
        if not have:
            labels = self.root / "labels"
            folders = sorted(d.name for d in labels.iterdir() if d.name.endswith(".slide")) if labels.is_dir() else []
            if folders:
                raise CorruptFileError(f"{where} has no table 'slides', but labels/{folders[0]} holds the chunks of a "
                                       "large image: the index was damaged (restore it from a backup)")
            return False
        for table, columns in _SLIDE_COLUMNS.items():
            if table not in have:
                raise CorruptFileError(f"{where} has no table {table!r} beside {', '.join(map(repr, have))}: the "
                                       "tables of large images were damaged (restore the index from a backup)")
            missing = [c for c in columns if c not in have[table]]
            if missing:
                raise CorruptFileError(f"{where}: table {table!r} lacks the column {missing[0]!r} (a damaged index; "
                                       "restore it from a backup)")
        return True

    def _read_slides(self, records: dict[int, ImageRecord]) -> dict[str, int]:
        """``{name: chunk side}`` of the images whose labels are stored in chunks (checked), and
        the label files that more than one entry of the index points at (:attr:`_shared`)."""
        where = self.root / DB_FILE
        tables = self._slide_tables()
        # a file two entries point at (a tampered index): reading either says so, and no commit
        # or clear deletes it while another entry may still need it. Entries are compared by the
        # file they name, not by their text: 'x.npz' and './x.npz' are one file. A project made
        # before the tables of large images has only planes (two of them may share a file too)
        entries: dict[object, list] = {}
        query = "SELECT file FROM chunks UNION ALL SELECT file FROM planes" if tables else "SELECT file FROM planes"
        for (rel,) in self._db.execute(query):
            try:
                key: object = str(self._label_path(rel))
            except CorruptFileError:
                key = ("unresolved", rel)  # a pointer outside labels/: no file of ours (see _retire)
            entries.setdefault(key, []).append(rel)
        self._shared: set[str] = {rel for rels in entries.values() if len(rels) > 1 for rel in rels}
        if not tables:
            return {}
        out = {}
        for iid, chunk in self._db.execute("SELECT image, chunk FROM slides"):
            rec = records.get(iid)
            if rec is None:
                continue
            if not (isinstance(chunk, int) and _CHUNK_RANGE[0] <= chunk <= _CHUNK_RANGE[1]) or rec.is_stack:
                raise CorruptFileError(f"{where}: large image {rec.name!r} has a malformed entry (chunk side "
                                       f"{str(chunk)[:20]!r}, {rec.frames} frames; a large image is one plane "
                                       f"in chunks of {_CHUNK_RANGE[0]}..{_CHUNK_RANGE[1]} pixels)")
            out[rec.name] = chunk
        return out

    def _read_classes(self, db: sqlite3.Connection) -> list[ClassInfo]:
        where = self.root / DB_FILE
        out = []
        for cid, name, color, kind in db.execute("SELECT id, name, color, kind FROM classes ORDER BY id"):
            try:
                check_name(name, "class name", path_part=False)
                color = json.loads(color)
                if len(color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in color):
                    raise ValueError(f"colour {color!r}")
                if kind not in KINDS or (cid == 0 and kind != STUFF):
                    raise ValueError(f"kind {str(kind)[:20]!r} (class 0 is stuff, others thing or stuff)")
            except (InputError, ValueError, TypeError) as err:
                raise CorruptFileError(f"{where}: class {cid} has a malformed entry: {err}") from err
            out.append(ClassInfo(int(cid), name, tuple(color), kind))
        if [c.id for c in out] != list(range(len(out))) or not 2 <= len(out) <= MAX_CLASSES:
            raise CorruptFileError(f"{where}: class ids must be 0..N-1 in order, with 2 <= N <= {MAX_CLASSES}")
        return out

    # ------------------------------------------------------------------ images
    @property
    def name(self) -> str:
        return str(self._settings.get("name", self.root.name))

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
        except (KeyError, TypeError):
            raise InputError(f"no image named {image!r} in project {self.root}") from None

    @property
    def image_root(self) -> Path:
        root = Path(self._settings["image_root"])
        return root if root.is_absolute() else _inside(self.root, str(root), "image root", self.root / DB_FILE)

    def image_paths(self, image: str | int) -> list[Path]:
        root = self.image_root
        return [_inside(root, f, "image file", self.root / DB_FILE) for f in self.record(image).files]

    def read_image(self, image: str | int, frame: int | None = None) -> np.ndarray:
        """Pixels of an image: ``(H, W[, 3])``, or ``(T, H, W[, 3])`` for a time-lapse."""
        rec = self.record(image)
        self._refuse_slide(rec, "read", "read a window of it from open_image(name) (a LazyImage)")
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
        return list(self._classes)

    @property
    def stuff_classes(self) -> tuple[int, ...]:
        """The classes other than the background that are areas, not objects."""
        return tuple(c.id for c in self._classes if c.kind == STUFF and c.id)

    @property
    def n_classes(self) -> int:
        return len(self._classes)

    def add_class(self, name: str, color: Sequence[int] | None = None, kind: str = THING) -> ClassInfo:
        """Append a class to the table (ids are never reused or renumbered); ``kind`` is
        'thing' (objects, an id each) or 'stuff' (one area per image)."""
        self._writable()
        check_name(name, "class name", path_part=False)
        if kind not in KINDS:
            raise InputError(f"a class is a 'thing' or 'stuff', got {kind!r}")
        if any(c.name == name for c in self._classes):
            raise InputError(f"class {name!r} already exists")
        cid = self.n_classes
        if cid >= MAX_CLASSES:
            raise InputError(f"the class table is full: labels are 16-bit, so at most {MAX_CLASSES} classes")
        rgb = tuple(int(v) for v in (color or PALETTE[cid % len(PALETTE)]))
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise InputError(f"a colour is three values 0..255, got {color!r}")
        info = ClassInfo(cid, name, rgb, kind)
        with self._transaction(f"adding class {name!r}") as db:
            db.execute("INSERT INTO classes(id, name, color, kind) VALUES (?, ?, ?, ?)",
                       (cid, name, json.dumps(list(rgb)), kind))
            self._journal(db, "class_added", id=cid, name=name, kind=kind)
        self._classes = [*self._classes, info]
        return info

    def rename_class(self, cid: int, name: str) -> None:
        self._writable()
        check_name(name, "class name", path_part=False)
        if not 0 <= cid < self.n_classes:
            raise InputError(f"no class with id {cid}")
        if any(c.name == name and c.id != cid for c in self._classes):
            raise InputError(f"class {name!r} already exists")
        with self._transaction(f"renaming class {cid}") as db:
            db.execute("UPDATE classes SET name = ? WHERE id = ?", (name, cid))
            self._journal(db, "class_renamed", id=cid, name=name)
        self._classes = [ClassInfo(c.id, name, c.color, c.kind) if c.id == cid else c for c in self._classes]

    def set_class_kind(self, cid: int, kind: str) -> None:
        """Make class ``cid`` a 'thing' (objects) or 'stuff' (areas) while it has no labels yet."""
        self._writable()
        if kind not in KINDS:
            raise InputError(f"a class is a 'thing' or 'stuff', got {kind!r}")
        if not 1 <= cid < self.n_classes:
            raise InputError(f"class {cid} cannot change kind (the background is always stuff)")
        with self._transaction(f"changing the kind of class {cid}") as db:
            used = db.execute("SELECT count(*) FROM objects WHERE class = ?", (cid,)).fetchone()[0]
            if used and self._classes[cid].kind != kind:
                raise InputError(f"class {self._classes[cid].name!r} already has {used} labelled areas; its kind "
                                 "can change only before it is used")
            db.execute("UPDATE classes SET kind = ? WHERE id = ?", (kind, cid))
            self._journal(db, "class_kind", id=cid, kind=kind)
        self._classes = [ClassInfo(c.id, c.name, c.color, kind) if c.id == cid else c for c in self._classes]

    # ------------------------------------------------------------------ snapshots
    @contextmanager
    def snapshot(self) -> Iterator[Project]:
        """Read inside one transaction: every read in the block sees the same commit.

        Replaced label files are kept while any snapshot is open (in any process), so a long
        export never finds a file gone. Nested calls share the outer snapshot.
        """
        if getattr(self._local, "conn", None) is not None:
            yield self
            return
        conn, fd = self._thread_reader()
        _flock(fd, exclusive=False, block=True)
        try:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT count(*) FROM classes").fetchone()  # the read transaction starts here
                self._local.conn = conn
                yield self
            finally:
                self._local.conn = None
                conn.execute("ROLLBACK")
        finally:
            _funlock(fd)

    def _thread_reader(self) -> tuple[sqlite3.Connection, int]:
        """This thread's read connection and its file descriptor for the readers' lock (kept open)."""
        if self._db is None:
            raise ProjectError(f"project {self.root} is closed")
        reader = getattr(self._local, "reader", None)
        if reader is None:
            fd = os.open(self.root / DB_FILE, os.O_RDONLY)
            try:
                reader = (_connect(self.root / DB_FILE, readonly=True), fd)
            except BaseException:
                os.close(fd)
                raise
            self._local.reader = reader
            with self._mutex:
                self._readers.append(reader)
        return reader

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self.snapshot():
            yield self._local.conn

    # ------------------------------------------------------------------ labels
    def label_file(self, image: str | int, frame: int | None = None) -> Path | None:
        """The current label file of an image (or one frame of a stack); None if unlabelled."""
        rec = self.record(image)
        t = self._frame_index(rec, frame)
        with self._reader() as db:
            row = db.execute("SELECT file FROM planes WHERE image = ? AND frame = ?",
                             (self._ids[rec.name], t)).fetchone()
        if row is not None and rec.name in self._slides:  # the folder of its chunks (see chunk_files)
            return _inside(self.root / "labels", row[0], "label folder", self.root / DB_FILE)
        return None if row is None else self._label_path(row[0])

    def _label_path(self, rel: str) -> Path:
        path = _inside(self.root / "labels", rel, "label file", self.root / DB_FILE)
        if path.suffix != ".npz":
            raise CorruptFileError(f"{self.root / DB_FILE}: label file {rel!r} is not an .npz file")
        return path

    def _frame_index(self, rec: ImageRecord, frame: int | None) -> int:
        if not rec.is_stack:
            return 0
        if frame is None:
            raise InputError(f"{rec.name!r} is a time-lapse: give a frame")
        self._check_frame(rec, frame)
        return int(frame)

    def _read_planes(self, db: sqlite3.Connection, rec: ImageRecord, frames: list[int]):
        """``[(instances, provenance, classes, file or None)]`` for ``frames``, read in the caller's snapshot."""
        iid = self._ids[rec.name]
        n_classes = db.execute("SELECT count(*) FROM classes").fetchone()[0]
        files = dict(db.execute("SELECT frame, file FROM planes WHERE image = ?", (iid,)))
        out = []
        for t in frames:
            if t not in files:
                out.append((np.zeros(rec.shape, _INST_DTYPE), np.zeros(rec.shape, _PROV_DTYPE), {}, None))
                continue
            classes = dict(db.execute("SELECT id, class FROM objects WHERE image = ? AND frame = ?", (iid, t)))
            out.append((*self._read_file(rec, files[t], n_classes, classes), classes, files[t]))
        return out

    def _read_file(self, rec: ImageRecord, rel: str, n_classes: int, classes: dict[int, int],
                   shape: tuple[int, int] | None = None, overview: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A label file (a plane, or a chunk of ``shape`` of a large image; its overview arrays
        with ``overview``), checked against the index."""
        path = self._label_path(rel)
        shape = tuple(rec.shape) if shape is None else tuple(shape)
        prefix = "overview_" if overview else ""
        if overview:
            shape = tuple(-(-n // OVERVIEW_STEP) for n in shape)
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, prov = z[f"{prefix}instances"], z[f"{prefix}provenance"]
        except Exception as err:  # noqa: BLE001 - any decode failure names the file
            raise CorruptFileError(f"label file {path} is unreadable ({err}); the other images are unaffected. "
                                   "Clear this image's labels to start it afresh.") from err
        problem = None
        if ids.shape != shape or prov.shape != shape:
            problem = f"has shape {ids.shape}, expected {shape}"
        elif ids.dtype != _INST_DTYPE or prov.dtype != _PROV_DTYPE:
            problem = f"holds {ids.dtype} object ids and {prov.dtype} provenance, expected uint32 and uint8"
        elif prov.size and int(prov.max()) > SIMULATED:
            problem = f"holds the provenance code {int(prov.max())} (0..{SIMULATED} are known)"
        elif any(not 1 <= c < n_classes for c in classes.values()):
            problem = f"has objects of a class beyond the class table (1..{n_classes - 1})"
        elif ids.size and bool(((ids != 0) & (prov == UNLABELLED)).any()):
            problem = "has objects on unlabelled pixels"
        else:
            present = inst.ids_of(ids)
            missing = np.setdiff1d(present, np.fromiter(classes, np.int64, len(classes)))
            if missing.size:
                problem = f"holds object {int(missing[0])}, which the index does not list"
        if problem:
            raise CorruptFileError(f"label file {path} {problem}; the other images are unaffected")
        return ids, prov

    def read_instances(self, image: str | int, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(instances uint32, provenance uint8, classes)`` of an image: an object id per pixel
        (0: no object), the provenance per pixel, and the class of each object id.

        For a time-lapse without ``frame`` the arrays are ``(T, H, W)`` from one snapshot and
        ``classes`` covers every frame (an id is one object over time).
        """
        rec = self.record(image)
        self._refuse_slide(rec, "read", "read a window of its labels (read_window)")
        frames = list(range(rec.frames)) if (rec.is_stack and frame is None) else [self._frame_index(rec, frame)]
        with self._reader() as db:
            planes = self._read_planes(db, rec, frames)
        if rec.is_stack and frame is None:
            classes: dict[int, int] = {}
            for t, p in zip(frames, planes):
                for k, v in p[2].items():
                    if classes.setdefault(k, v) != v:
                        raise CorruptFileError(f"{self.root / DB_FILE}: object {k} of {rec.name!r} has class "
                                               f"{classes[k]} and, on frame {t}, class {v}; an id is one object")
            return np.stack([p[0] for p in planes]), np.stack([p[1] for p in planes]), classes
        return planes[0][0], planes[0][1], planes[0][2]

    def read_labels(self, image: str | int, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels uint16, provenance uint8)`` of an image: the class of each pixel, derived
        from its instances (zeros where nothing is labelled).

        For a time-lapse without ``frame``, both arrays are ``(T, H, W)``, all frames from one
        commit snapshot.
        """
        rec = self.record(image)
        self._refuse_slide(rec, "read", "read a window of its labels (read_window)")
        frames = list(range(rec.frames)) if (rec.is_stack and frame is None) else [self._frame_index(rec, frame)]
        with self._reader() as db:
            planes = self._read_planes(db, rec, frames)
        sem = [inst.semantic(p[0], p[2]) for p in planes]
        if rec.is_stack and frame is None:
            return np.stack(sem), np.stack([p[1] for p in planes])
        return sem[0], planes[0][1]

    def objects(self, image: str | int | None = None) -> list[dict]:
        """The objects of one image (or of all), from the index: image, frame, id, class, area,
        provenance, box (y0, x0, y1, x1, half-open) and centroid (cy, cx)."""
        names = {iid: name for name, iid in self._ids.items()}
        query = "SELECT image, frame, id, class, area, provenance, y0, x0, y1, x1, cy, cx FROM objects"
        args: tuple = ()
        if image is not None:
            query += " WHERE image = ?"
            args = (self._ids[self.record(image).name],)
        with self._reader() as db:
            rows = db.execute(query + " ORDER BY image, frame, id", args).fetchall()
        keys = ("frame", "id", "class", "area", "provenance", "y0", "x0", "y1", "x1", "cy", "cx")
        return [{"image": names[r[0]], **dict(zip(keys, r[1:]))} for r in rows if r[0] in names]

    def object(self, image: str | int, oid: int, frame: int | None = None) -> dict | None:
        """One object of one plane from the index (the keys of :meth:`objects`), or None if the
        plane has no object ``oid`` (a cheap look-up: a large image may hold many objects)."""
        rec = self.record(image)
        t = self._frame_index(rec, frame)
        with self._reader() as db:
            row = db.execute("SELECT frame, id, class, area, provenance, y0, x0, y1, x1, cy, cx FROM objects "
                             "WHERE image = ? AND frame = ? AND id = ?", (self._ids[rec.name], t, int(oid))).fetchone()
        keys = ("frame", "id", "class", "area", "provenance", "y0", "x0", "y1", "x1", "cy", "cx")
        return None if row is None else {"image": rec.name, **dict(zip(keys, row))}

    # ------------------------------------------------------------------ large images, in chunks
    def is_slide(self, image: str | int) -> bool:
        """Whether the labels of ``image`` are stored in chunks (an image above
        :data:`napari_hitl.io.LAZY_PIXELS` pixels when it was added): read and commit them by
        window (:meth:`read_window`, :meth:`commit_window`), never whole."""
        return self.record(image).name in self._slides

    def labelled_boxes(self, image: str | int,
                       sources: Sequence[int] = (HUMAN, SIMULATED)) -> list[tuple[int, int, int, int]]:
        """Where large image ``image`` holds objects with pixels of ``sources`` (provenance codes,
        default human and simulated): the box ``(y0, x0, y1, x1)``, half-open, of each such
        object's pixels in each label chunk it lies in, read from the index (no label file)."""
        rec = self.record(image)
        if rec.name not in self._slides:
            raise InputError(f"{rec.name!r} is not a large image; its labels are one plane")
        cols = [f"p{int(c)}" for c in sources if int(c) in (HUMAN, MACHINE, PSEUDO, SIMULATED)]
        if not cols:
            return []
        with self._reader() as db:
            rows = db.execute(f"SELECT y0, x0, y1, x1 FROM chunk_objects WHERE image = ? AND frame = 0 AND "
                              f"({' OR '.join(c + ' > 0' for c in cols)})", (self._ids[rec.name],)).fetchall()
        return [tuple(int(v) for v in r) for r in rows]

    def slide_chunk(self, image: str | int) -> int:
        """The chunk side of a large image's labels."""
        rec = self.record(image)
        if rec.name not in self._slides:
            raise InputError(f"{rec.name!r} is not a large image; its labels are one plane")
        return self._slides[rec.name]

    def _refuse_slide(self, rec: ImageRecord, what: str, instead: str) -> None:
        if rec.name in self._slides:
            raise InputError(f"{rec.name!r} is a large image ({rec.shape[0]}x{rec.shape[1]}), never {what} whole; "
                             f"{instead}")

    def open_image(self, image: str | int) -> io.LazyImage:
        """A large image as a :class:`~napari_hitl.io.LazyImage` (read window by window; close it)."""
        rec = self.record(image)
        path = self.image_paths(rec.name)[0]
        if not path.exists():
            raise ProjectError(f"image file {path} of {rec.name!r} is missing; was the image folder moved?")
        img = io.open_lazy(path)
        if tuple(img.shape[:2]) != tuple(rec.shape):
            img.close()
            raise CorruptFileError(f"{path} is now {img.shape[0]}x{img.shape[1]} but the project recorded "
                                   f"{rec.shape[0]}x{rec.shape[1]}; the file was changed after the project was made")
        return img

    def _slide_args(self, rec: ImageRecord, frame: int | None, box: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        if rec.name not in self._slides:
            raise InputError(f"{rec.name!r} is not a large image; read or commit its labels whole")
        if frame not in (None, 0):
            raise InputError(f"{rec.name!r} has one plane; frame {frame} does not exist")
        y0, x0, y1, x1 = (int(v) for v in box)
        h, w = rec.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(f"window y {y0}:{y1}, x {x0}:{x1} is empty or outside the {h}x{w} image {rec.name!r}")
        return self._slides[rec.name], (y0, x0, y1, x1)

    def _chunk_box(self, rec: ImageRecord, chunk: int, cy: int, cx: int) -> tuple[int, int, int, int]:
        return cy * chunk, cx * chunk, min(rec.shape[0], (cy + 1) * chunk), min(rec.shape[1], (cx + 1) * chunk)

    def _chunk_rows(self, db: sqlite3.Connection, rec: ImageRecord, chunk: int, box) -> dict[tuple[int, int], str]:
        """``{(cy, cx): file}`` of the stored chunks that ``box`` covers (checked)."""
        y0, x0, y1, x1 = box
        ys, xs = _chunk_range(y0, y1, chunk), _chunk_range(x0, x1, chunk)
        rows = db.execute("SELECT cy, cx, file FROM chunks WHERE image = ? AND frame = 0 AND cy BETWEEN ? AND ? "
                          "AND cx BETWEEN ? AND ?", (self._ids[rec.name], ys[0], ys[-1], xs[0], xs[-1])).fetchall()
        for cy, cx, rel in rows:
            if not (isinstance(cy, int) and isinstance(cx, int) and isinstance(rel, str)):
                raise CorruptFileError(f"{self.root / DB_FILE}: a chunk of {rec.name!r} has a malformed entry")
            if rel in self._shared:
                raise CorruptFileError(f"{self.root / DB_FILE}: table 'chunks': chunk ({cy}, {cx}) of {rec.name!r} "
                                       f"points at the label file {rel}, which another entry points at too (a "
                                       "tampered index); the other images are unaffected. Clear this image's labels "
                                       "to start it afresh.")
        return {(cy, cx): rel for cy, cx, rel in rows}

    def _chunk_classes(self, db: sqlite3.Connection, rec: ImageRecord, cy: int, cx: int) -> dict[int, int]:
        """The class of each object the index lists in one chunk."""
        listed = dict(db.execute(
            "SELECT c.id, o.class FROM chunk_objects c JOIN objects o ON o.image = c.image AND o.frame = c.frame "
            "AND o.id = c.id WHERE c.image = ? AND c.frame = 0 AND c.cy = ? AND c.cx = ?",
            (self._ids[rec.name], cy, cx)))
        if not all(isinstance(k, int) and isinstance(v, int) for k, v in listed.items()):
            raise CorruptFileError(f"{self.root / DB_FILE}: table 'chunk_objects' or 'objects' has a malformed entry "
                                   f"for chunk ({cy}, {cx}) of {rec.name!r}; clear this image's labels to start it "
                                   "afresh")
        return listed

    def _read_chunk(self, db: sqlite3.Connection, rec: ImageRecord, chunk: int, cy: int, cx: int, rel: str,
                    n_classes: int, overview: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """One stored chunk (or its overview): ids, provenance and the class of each object the
        index lists in it."""
        listed = self._chunk_classes(db, rec, cy, cx)
        by, bx, ey, ex = self._chunk_box(rec, chunk, cy, cx)
        ids, prov = self._read_file(rec, rel, n_classes, listed, shape=(ey - by, ex - bx), overview=overview)
        return ids, prov, listed

    def read_window(self, image: str | int, y0: int, x0: int, y1: int, x1: int, *, step: int = 1,
                    frame: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(instances, provenance, classes)`` of the window ``[y0:y1:step, x0:x1:step]`` of a
        large image, reading only the chunks it covers (each checked: shape, dtypes, values,
        objects the index lists); ``classes`` gives the class of every object id in the window."""
        rec = self.record(image)
        chunk, (y0, x0, y1, x1) = self._slide_args(rec, frame, (y0, x0, y1, x1))
        step = int(step)
        if step < 1:
            raise InputError(f"step {step} must be at least 1")
        ids = np.zeros((len(range(y0, y1, step)), len(range(x0, x1, step))), _INST_DTYPE)
        prov = np.zeros(ids.shape, _PROV_DTYPE)
        classes: dict[int, int] = {}
        with self._reader() as db:
            n_classes = db.execute("SELECT count(*) FROM classes").fetchone()[0]
            # a read on the grid of its step (what napari's levels ask for, and a hover's pixel) keeps
            # each chunk's sampled pixels: chunk files never change, so their name is the key
            aligned = y0 % step == 0 and x0 % step == 0 and chunk % step == 0
            for (cy, cx), rel in sorted(self._chunk_rows(db, rec, chunk, (y0, x0, y1, x1)).items()):
                by, bx, ey, ex = self._chunk_box(rec, chunk, cy, cx)
                # the window's sampled rows / columns inside this chunk
                fy = max(y0, by + (-(by - y0) % step)) if by > y0 else y0
                fx = max(x0, bx + (-(bx - x0) % step)) if bx > x0 else x0
                ly, lx = min(y1, ey), min(x1, ex)
                if fy >= ly or fx >= lx:
                    continue
                if aligned:
                    c_ids, c_prov, listed = self._sampled_chunk(db, rec, chunk, cy, cx, rel, n_classes, step)
                    src = (slice((fy - by) // step, (fy - by) // step + len(range(fy, ly, step))),
                           slice((fx - bx) // step, (fx - bx) // step + len(range(fx, lx, step))))
                else:
                    c_ids, c_prov, listed = self._read_chunk(db, rec, chunk, cy, cx, rel, n_classes)
                    src = (slice(fy - by, ly - by, step), slice(fx - bx, lx - bx, step))
                dst = (slice((fy - y0) // step, (fy - y0) // step + len(range(fy, ly, step))),
                       slice((fx - x0) // step, (fx - x0) // step + len(range(fx, lx, step))))
                ids[dst], prov[dst] = c_ids[src], c_prov[src]
                classes.update(listed)
        present = set(inst.ids_of(ids).tolist())
        return ids, prov, {k: v for k, v in classes.items() if k in present}

    #: bytes of (sampled) chunks kept for reads on their step's grid (see :meth:`read_window`)
    COARSE_CACHE_BYTES = 64 << 20

    def _sampled_chunk(self, db: sqlite3.Connection, rec: ImageRecord, chunk: int, cy: int, cx: int, rel: str,
                      n_classes: int, step: int) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """A chunk's every ``step``-th pixel from its origin (all of it for step 1), read and checked
        once per chunk file while it stays in the cache; the classes are looked up each time (an
        object's class can change elsewhere)."""
        key = (rel, step)
        with self._mutex:
            hit = self._sampled.get(key)
            if hit is not None:
                self._sampled.move_to_end(key)
        if hit is None:
            overview = step % OVERVIEW_STEP == 0 and chunk % OVERVIEW_STEP == 0
            c_ids, c_prov, listed = self._read_chunk(db, rec, chunk, cy, cx, rel, n_classes, overview=overview)
            k = step // OVERVIEW_STEP if overview else step
            hit = (np.ascontiguousarray(c_ids[::k, ::k]), np.ascontiguousarray(c_prov[::k, ::k]))
            with self._mutex:
                self._sampled[key] = hit
                self._sampled_bytes += hit[0].nbytes + hit[1].nbytes
                while self._sampled_bytes > self.COARSE_CACHE_BYTES and self._sampled:
                    _, old = self._sampled.popitem(last=False)
                    self._sampled_bytes -= old[0].nbytes + old[1].nbytes
            return (*hit, listed)
        return (*hit, self._chunk_classes(db, rec, cy, cx))

    def lazy_instances(self, image: str | int, min_side: int = 1024) -> list[io.WindowView]:
        """A large image's object ids as array-likes that read chunk by chunk, full resolution
        first, then every second pixel, and so on down to ``min_side`` (napari's multiscale
        Labels data); each read sees the latest commit."""
        rec = self.record(image)
        self._slide_args(rec, None, (0, 0, *rec.shape))
        views, step = [], 1
        while True:
            shape = (len(range(0, rec.shape[0], step)), len(range(0, rec.shape[1], step)))
            views.append(io.WindowView(shape, _INST_DTYPE, lambda y0, x0, y1, x1, s=step: self.read_window(
                rec.name, y0 * s, x0 * s, min(rec.shape[0], y1 * s), min(rec.shape[1], x1 * s), step=s)[0]))
            if max(shape) <= min_side:
                return views
            step *= 2

    def chunk_files(self, image: str | int) -> dict[tuple[int, int], Path]:
        """``{(cy, cx): label file}`` of a large image's stored chunks (chunks not listed hold no labels)."""
        rec = self.record(image)
        chunk, box = self._slide_args(rec, None, (0, 0, *rec.shape))
        with self._reader() as db:
            return {k: self._label_path(rel) for k, rel in self._chunk_rows(db, rec, chunk, box).items()}

    def commit_window(self, image: str | int, instances: np.ndarray, classes: dict[int, int], *,
                      offset: Sequence[int] = (0, 0), source: str | int = HUMAN, where: np.ndarray | None = None,
                      provenance: np.ndarray | None = None, frame: int | None = None, event: str = "commit",
                      **detail: Any) -> Counts:
        """:meth:`commit_instances` for a window of a large image whose pixel [0, 0] is image pixel
        ``offset`` (y, x): the same rules (a person's ids kept, machine objects renumbered and
        never over a person's pixels, one id per stuff class), touching only the chunks the
        window covers. Each changed chunk is written as a new label file; one transaction then
        switches the chunks' pointers, the objects the window touches (their area, box and
        centroid summed over every chunk they lie in), the counts and the journal entry, so a
        crash leaves the previous commit whole. A chunk the commit leaves unchanged is not rewritten."""
        self._writable()
        rec = self.record(image)
        ids = inst.check_instances(instances, what=f"window of {rec.name!r}")
        if ids.ndim != 2:
            raise InputError(f"a window of {rec.name!r} is one plane (h, w), got shape {ids.shape}")
        y0, x0 = (int(v) for v in offset)
        chunk, (y0, x0, y1, x1) = self._slide_args(rec, frame, (y0, x0, y0 + ids.shape[0], x0 + ids.shape[1]))
        what = f"window of {rec.name!r}"
        table = inst.check_classes(ids, classes, self.n_classes, what)
        if where is not None:
            where = np.asarray(where)
            if where.dtype != bool or where.shape != ids.shape:
                raise InputError(f"'where' must be a boolean mask of shape {ids.shape}, "
                                 f"got {where.dtype} {where.shape}")
        if provenance is not None:
            provenance = np.asarray(provenance)
            if provenance.shape != ids.shape or provenance.dtype.kind not in "ui" or (
                    provenance.size and not 0 <= int(provenance.min()) <= int(provenance.max()) <= SIMULATED):
                raise InputError(f"provenance for {rec.name!r} must be codes 0..{SIMULATED} of shape {ids.shape}")
            if bool(((ids != 0) & (provenance == UNLABELLED) & (True if where is None else where)).any()):
                raise InputError(f"{what}: an object lies on pixels whose provenance says unlabelled")
            code = HUMAN
        else:
            code = self._source_code(source)
        if not isinstance(event, str) or not event.isidentifier():
            raise InputError(f"journal event {event!r} must be a word")
        kinds = [c.kind for c in self._classes]
        iid = self._ids[rec.name]
        ys, xs = _chunk_range(y0, y1, chunk), _chunk_range(x0, x1, chunk)
        ry0, rx0 = ys[0] * chunk, xs[0] * chunk
        ry1, rx1 = min(rec.shape[0], (ys[-1] + 1) * chunk), min(rec.shape[1], (xs[-1] + 1) * chunk)
        new_files: list[Path] = []
        with self._mutex:
            db = self._db
            with self._writing(event, rec, new_files):
                n_classes = self.n_classes
                next_id = self._next_id(db, iid)
                stored = self._chunk_rows(db, rec, chunk, (y0, x0, y1, x1))
                names = {(cy, cx): f"i{iid:06d}-t00000.slide/c{cy:05d}-{cx:05d}-{secrets.token_hex(6)}.npz"
                         for cy in ys for cx in xs}
                intent = self._intend(new_files, names.values(), stored.values())
                old_ids = np.zeros((ry1 - ry0, rx1 - rx0), _INST_DTYPE)
                old_prov = np.zeros(old_ids.shape, _PROV_DTYPE)
                for (cy, cx), rel in stored.items():
                    c_ids, c_prov, _ = self._read_chunk(db, rec, chunk, cy, cx, rel, n_classes)
                    by, bx, ey, ex = self._chunk_box(rec, chunk, cy, cx)
                    old_ids[by - ry0:ey - ry0, bx - rx0:ex - rx0] = c_ids
                    old_prov[by - ry0:ey - ry0, bx - rx0:ex - rx0] = c_prov
                sub = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
                o_ids, o_prov = old_ids[sub], old_prov[sub]
                take = np.ones(ids.shape, bool) if where is None else where.copy()
                if code not in KEPT:
                    take &= ~np.isin(o_prov, KEPT)  # human (and simulated) labels always win
                    plane, plane_classes = _renumber(ids, table, next_id)
                else:
                    plane, plane_classes = ids, dict(table)
                # a stuff class keeps one id per plane: the id it already has, else the first given
                known = {}
                if any(kinds[v] == STUFF for v in plane_classes.values()):
                    known = dict(db.execute("SELECT class, min(id) FROM objects WHERE image = ? AND frame = 0 "
                                            "GROUP BY class", (iid,)))
                remap = {}
                for k, v in sorted(plane_classes.items()):
                    if kinds[v] == STUFF:
                        keep = known.setdefault(v, k)
                        if keep != k:
                            remap[k] = keep
                if remap:
                    plane = plane.copy()
                    for k, keep in remap.items():
                        plane[plane == k] = keep
                    plane_classes = {remap.get(k, k): v for k, v in plane_classes.items()}
                written = int(take.sum())
                new_ids, new_prov = old_ids.copy(), old_prov.copy()
                new_ids[sub] = np.where(take, plane, o_ids)
                new_prov[sub] = np.where(take, np.uint8(code) if provenance is None else provenance.astype(_PROV_DTYPE),
                                         o_prov)
                # the chunks that change: new files, their object sums, the count deltas
                chunk_rows, gone, sums_rows, changed = [], [], [], []
                delta = np.zeros(5, np.int64)
                for cy in ys:
                    for cx in xs:
                        by, bx, ey, ex = self._chunk_box(rec, chunk, cy, cx)
                        part = (slice(by - ry0, ey - ry0), slice(bx - rx0, ex - rx0))
                        c_ids, c_prov = new_ids[part], new_prov[part]
                        if np.array_equal(c_ids, old_ids[part]) and np.array_equal(c_prov, old_prov[part]):
                            continue
                        changed.append((cy, cx))
                        delta += np.bincount(c_prov.ravel(), minlength=5)[:5] - np.bincount(
                            old_prov[part].ravel(), minlength=5)[:5]
                        if not c_prov.any():
                            gone.append((cy, cx))
                            continue
                        rel = names[cy, cx]
                        path = self.root / "labels" / rel
                        if not path.parent.is_dir():  # the first commit: its folder's entry survives a crash
                            path.parent.mkdir(parents=True, exist_ok=True)
                            io.fsync_dir(path.parent.parent)
                        new_files.append(path)
                        _write_npz(path, np.ascontiguousarray(c_ids), np.ascontiguousarray(c_prov),
                                   overview=OVERVIEW_STEP)
                        chunk_rows.append((iid, 0, cy, cx, rel))
                        sm = inst.object_sums(c_ids, c_prov, offset=(by, bx))
                        sums_rows.extend((iid, 0, cy, cx, int(sm.ids[k]), int(sm.area[k]), float(sm.sum_y[k]),
                                          float(sm.sum_x[k]), *(int(v) for v in sm.boxes[k]),
                                          *(int(v) for v in sm.provenance[k, 1:5])) for k in range(len(sm.ids)))
                object_rows, affected = self._slide_objects(db, rec, changed, sums_rows, plane_classes)
                row = db.execute("SELECT unlabelled, human, machine, pseudo, simulated FROM planes WHERE image = ? "
                                 "AND frame = 0", (iid,)).fetchone()
                if row is not None and not all(isinstance(v, int) for v in row):
                    raise CorruptFileError(f"{self.root / DB_FILE}: table 'planes' has a malformed entry for "
                                           f"{rec.name!r}; clear this image's labels to start it afresh")
                before = np.array(row if row else (rec.shape[0] * rec.shape[1], 0, 0, 0, 0), np.int64)
                after = before + delta
                if (after < 0).any():
                    raise CorruptFileError(f"{self.root / DB_FILE}: the pixel counts of {rec.name!r} do not match "
                                           "its chunks; clear its labels to start it afresh")
                if object_rows:
                    next_id = max(next_id, max(r[2] for r in object_rows) + 1)
            try:
                with self._transaction(f"{event} of {rec.name!r}") as tx:
                    tx.executemany("DELETE FROM chunks WHERE image = ? AND frame = 0 AND cy = ? AND cx = ?",
                                   [(iid, cy, cx) for cy, cx in changed])
                    tx.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", chunk_rows)
                    tx.executemany("DELETE FROM chunk_objects WHERE image = ? AND frame = 0 AND cy = ? AND cx = ?",
                                   [(iid, cy, cx) for cy, cx in changed])
                    tx.executemany("INSERT INTO chunk_objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   sums_rows)
                    tx.executemany("DELETE FROM objects WHERE image = ? AND frame = 0 AND id = ?",
                                   [(iid, k) for k in affected])
                    tx.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", object_rows)
                    tx.execute("INSERT OR REPLACE INTO planes(image, frame, file, unlabelled, human, machine, pseudo, "
                               "simulated) VALUES (?, 0, ?, ?, ?, ?, ?, ?)",
                               (iid, f"i{iid:06d}-t00000.slide", *(int(v) for v in after)))
                    tx.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (iid, next_id))
                    counts = self._counts_of(tx, rec)
                    self._journal(tx, event, image=rec.name, window=[y0, x0, y1, x1], chunks=len(changed),
                                  source=PROVENANCE_NAMES[code], pixels=written, human=counts.human, **detail)
            except BaseException:
                self._discard(new_files)
                raise
            self._retire((stored[key] for key in changed if key in stored), intent)
        self._collect()
        return counts

    def _slide_objects(self, db: sqlite3.Connection, rec: ImageRecord, changed: list[tuple[int, int]],
                       sums_rows: list[tuple], new_classes: dict[int, int]) -> tuple[list[tuple], list[int]]:
        """The ``objects`` rows of every object in the ``changed`` chunks (before or after), or given
        a new class in ``new_classes``, summed over all the chunks each lies in: the new chunks' ``sums_rows`` and the stored rows of the
        others. Returns the rows and the ids whose rows are replaced."""
        iid = self._ids[rec.name]
        changed_set = set(changed)
        affected = {r[4] for r in sums_rows}
        for cy, cx in changed:
            affected.update(k for (k,) in db.execute("SELECT id FROM chunk_objects WHERE image = ? AND frame = 0 AND "
                                                    "cy = ? AND cx = ?", (iid, cy, cx)))
        # an object given a new class in chunks the commit does not rewrite: its row changes too
        given = sorted(set(new_classes) - affected)
        for start in range(0, len(given), 500):
            part = given[start:start + 500]
            affected.update(k for k, c in db.execute(f"SELECT id, class FROM objects WHERE image = ? AND frame = 0 "
                                                     f"AND id IN ({', '.join('?' * len(part))})", (iid, *part))
                            if c != new_classes[k])
        if not affected:
            return [], []
        ids = sorted(affected)
        old_classes: dict[int, int] = {}
        rows = list(sums_rows)
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ", ".join("?" * len(part))
            old_classes.update(db.execute(f"SELECT id, class FROM objects WHERE image = ? AND frame = 0 AND id IN "
                                          f"({marks})", (iid, *part)))
            rows.extend(r for r in db.execute(f"SELECT * FROM chunk_objects WHERE image = ? AND frame = 0 AND id IN "
                                              f"({marks})", (iid, *part)) if (r[2], r[3]) not in changed_set)
        total: dict[int, list] = {}
        for r in rows:
            if len(r) != 16 or not all(isinstance(v, int) for v in (*r[4:6], *r[8:16])) or not all(
                    isinstance(v, (int, float)) for v in r[6:8]):
                raise CorruptFileError(f"{self.root / DB_FILE}: table 'chunk_objects' has a malformed entry for "
                                       f"chunk ({r[2]!r}, {r[3]!r}) of {rec.name!r}; clear this image's labels to "
                                       "start it afresh")
            oid, area, sy, sx, y0, x0, y1, x1 = r[4:12]
            p = r[12:16]
            t = total.get(oid)
            if t is None:
                total[oid] = [area, sy, sx, y0, x0, y1, x1, *p]
            else:
                t[0] += area
                t[1] += sy
                t[2] += sx
                t[3], t[4], t[5], t[6] = min(t[3], y0), min(t[4], x0), max(t[5], y1), max(t[6], x1)
                for k in range(4):
                    t[7 + k] += p[k]
        out = []
        for oid, t in sorted(total.items()):
            cls = new_classes.get(oid, old_classes.get(oid))
            if cls is None:
                raise CorruptFileError(f"{self.root / DB_FILE}: object {oid} of {rec.name!r} has no class in the index")
            prov = 1 + int(np.argmax(t[7:11]))
            out.append((iid, 0, oid, cls, int(t[0]), prov, int(t[3]), int(t[4]), int(t[5]), int(t[6]),
                        t[1] / t[0], t[2] / t[0]))
        return out, ids

    def _check_frame(self, rec: ImageRecord, frame: int) -> None:
        if not 0 <= frame < rec.frames:
            raise InputError(f"frame {frame} is outside 0..{rec.frames - 1} of {rec.name!r}")

    def _source_code(self, source: str | int) -> int:
        code = _PROVENANCE_CODES.get(source, source) if isinstance(source, str) else int(source)
        if code not in (HUMAN, MACHINE, PSEUDO, SIMULATED):
            raise InputError(f"source must be 'human', 'machine', 'pseudo' or 'simulated', got {source!r}")
        return code

    def _commit_args(self, rec: ImageRecord, frame: int | None, where) -> tuple[tuple, list[int], bool, Any]:
        self._refuse_slide(rec, "committed", "commit a window of its labels (commit_window)")
        if rec.is_stack and frame is None:
            shape = rec.label_shape
        else:
            if rec.is_stack:
                self._check_frame(rec, frame)
            shape = tuple(rec.shape)
        if where is not None:
            where = np.asarray(where)
            if where.dtype != bool or where.shape != shape:
                raise InputError(f"'where' must be a boolean mask of shape {shape}, got {where.dtype} {where.shape}")
        frames = list(range(rec.frames)) if (rec.is_stack and frame is None) else [self._frame_index(rec, frame)]
        return shape, frames, rec.is_stack and frame is None, where

    def commit_labels(self, image: str | int, labels: np.ndarray, *, source: str | int = HUMAN,
                      where: np.ndarray | None = None, frame: int | None = None) -> Counts:
        """Persist a class map for the pixels in ``where`` (default: all); return the new counts.

        Each connected area of a thing class becomes an object (joining an object of its class
        that it lies on or touches), each stuff class one area. ``source`` is 'human',
        'machine' (accepted predictions), 'pseudo' or 'simulated'. Machine and pseudo labels
        never replace a human label: those pixels keep theirs. All frames of the commit and
        its journal entry land together or not at all, before this returns; a failure raises
        :class:`CommitError` saying that nothing changed.
        """
        self._writable()
        rec = self.record(image)
        code = self._source_code(source)
        shape, frames, stacked, where = self._commit_args(rec, frame, where)
        labels = io.check_labels(labels, shape, self.n_classes, what=f"labels for {rec.name!r}")
        kinds = [c.kind for c in self._classes]
        written = [0]

        def update(t, i, old_ids, old_prov, old_classes, next_id):
            plane = labels[i] if stacked else labels
            take = np.ones(rec.shape, bool) if where is None else (where[i] if stacked else where).copy()
            if code not in KEPT:
                take &= ~np.isin(old_prov, KEPT)  # human (and simulated) labels always win
            written[0] += int(take.sum())
            ids, classes = inst.from_semantic(plane, kinds, where=take, old=old_ids, old_classes=old_classes,
                                              next_id=next_id)
            return ids, np.where(take, np.uint8(code), old_prov).astype(_PROV_DTYPE), classes

        return self._commit(rec, frames, update, "commit",
                            lambda c: dict(image=rec.name, frame=frame, source=PROVENANCE_NAMES[code],
                                           pixels=written[0], human=c.human),
                            replaces_all=where is None and code in KEPT)

    def commit_instances(self, image: str | int, instances: np.ndarray, classes: dict[int, int], *,
                         source: str | int = HUMAN, where: np.ndarray | None = None, frame: int | None = None,
                         provenance: np.ndarray | None = None, event: str = "commit", **detail: Any) -> Counts:
        """Persist an instance map (an object id per pixel, 0: none) and the class of each of its
        objects for the pixels in ``where`` (default: all); return the new counts.

        A person's commit (``source`` 'human' or 'simulated') keeps the ids as given: they are
        the ids the person sees. Machine and pseudo objects get fresh ids and never replace a
        person's pixels. Background (class 0) is id 0 on a labelled pixel. ``provenance`` (a
        per-pixel code array) replaces ``source`` when importing labels that carry their own.
        ``event`` and ``detail`` name the edit in the journal (e.g. 'merge', ids=[3, 4]).
        Every id in ``instances`` needs a class and every class an id, else nothing changes.
        """
        self._writable()
        rec = self.record(image)
        shape, frames, stacked, where = self._commit_args(rec, frame, where)
        what = f"instances for {rec.name!r}"
        ids = inst.check_instances(instances, shape, what)
        table = inst.check_classes(ids, classes, self.n_classes, what)
        kinds = [c.kind for c in self._classes]
        if provenance is not None:
            provenance = np.asarray(provenance)
            if provenance.shape != shape or provenance.dtype.kind not in "ui" or (
                    provenance.size and not 0 <= int(provenance.min()) <= int(provenance.max()) <= SIMULATED):
                raise InputError(f"provenance for {rec.name!r} must be codes 0..{SIMULATED} of shape {shape}")
            if bool(((ids != 0) & (provenance == UNLABELLED) & (True if where is None else where)).any()):
                raise InputError(f"{what}: an object lies on pixels whose provenance says unlabelled")
            code = HUMAN
        else:
            code = self._source_code(source)
        if not isinstance(event, str) or not event.isidentifier():
            raise InputError(f"journal event {event!r} must be a word")
        written = [0]
        names = [c.name for c in self._classes]

        def check_over_time(frames_now: list[int]) -> None:
            """An id is one object over a time-lapse: its class is the same on every frame."""
            others = self._other_frames(self._ids[rec.name], frames_now)
            for k, v in table.items():
                o = others.get(k)
                if o is not None and o[0] != v:
                    raise InputError(f"object {k} is a {names[o[0]]!r} on frame {o[1]} of {rec.name!r}; an id is one "
                                     f"object over time, so it cannot be a {names[v]!r} here (give it a new id)")

        def update(t, i, old_ids, old_prov, old_classes, next_id):
            plane = ids[i] if stacked else ids
            take = np.ones(rec.shape, bool) if where is None else (where[i] if stacked else where).copy()
            prov_plane = None if provenance is None else (provenance[i] if stacked else provenance)
            if code not in KEPT:
                take &= ~np.isin(old_prov, KEPT)
                plane, plane_classes = _renumber(plane, table, next_id)
            else:
                if rec.is_stack and i == 0:
                    check_over_time(frames)
                plane_classes = table
            written[0] += int(take.sum())
            new_ids = np.where(take, plane, old_ids).astype(_INST_DTYPE)
            new_prov = np.where(take, np.uint8(code) if prov_plane is None else prov_plane.astype(_PROV_DTYPE),
                                old_prov).astype(_PROV_DTYPE)
            new_classes = {**old_classes, **plane_classes}
            # a stuff class keeps one id per plane: areas of it given under other ids join it
            for c in {v for v in plane_classes.values() if kinds[v] == STUFF}:
                same = sorted(k for k, v in new_classes.items() if v == c)
                if len(same) > 1:
                    new_ids, new_classes = inst.merge(new_ids, new_classes, same)
            present = set(inst.ids_of(new_ids).tolist())
            return new_ids, new_prov, {k: v for k, v in new_classes.items() if k in present}

        return self._commit(rec, frames, update, event,
                            lambda c: dict(image=rec.name, frame=frame, source=PROVENANCE_NAMES[code],
                                           pixels=written[0], human=c.human, **detail),
                            replaces_all=where is None and code in KEPT,
                            needs_old=not (where is None and code in KEPT))  # a whole plane of a person's

    def clear_labels(self, image: str | int, where: np.ndarray | None = None, frame: int | None = None) -> Counts:
        """Forget labels (any provenance) in ``where`` - a person's reset, journalled. A large
        image is cleared whole only (``where`` None): every chunk goes, readable or not (the way
        out of a damaged chunk file)."""
        self._writable()
        rec = self.record(image)
        if rec.name in self._slides:
            if where is not None or frame not in (None, 0):
                raise InputError(f"{rec.name!r} is a large image: clear its labels whole (no 'where'), or a "
                                 "window of them with commit_window")
            return self._clear_slide(rec)
        _, frames, stacked, where = self._commit_args(rec, frame, where)

        def update(t, i, old_ids, old_prov, old_classes, next_id):
            mask = np.ones(rec.shape, bool) if where is None else where[i] if stacked else where
            ids = np.where(mask, 0, old_ids).astype(_INST_DTYPE)
            present = set(inst.ids_of(ids).tolist())
            return (ids, np.where(mask, 0, old_prov).astype(_PROV_DTYPE),
                    {k: v for k, v in old_classes.items() if k in present})

        return self._commit(rec, frames, update, "clear", lambda c: dict(image=rec.name, frame=frame),
                            replaces_all=where is None)

    def _clear_slide(self, rec: ImageRecord) -> Counts:
        """Drop every chunk of a large image, its objects and counts in one transaction (its ids
        stay used), then delete the chunk files."""
        iid = self._ids[rec.name]
        with self._mutex:
            files = [rel for (rel,) in self._db.execute("SELECT file FROM chunks WHERE image = ?", (iid,))]
            notes: list[Path] = []
            with self._writing("clear", rec, notes):
                intent = self._intend(notes, (), files)
                with self._transaction(f"clear of {rec.name!r}") as tx:
                    next_id = self._next_id(tx, iid)
                    for table in ("chunks", "chunk_objects", "objects", "planes"):
                        tx.execute(f"DELETE FROM {table} WHERE image = ?", (iid,))
                    tx.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (iid, next_id))
                    counts = self._counts_of(tx, rec)
                    self._journal(tx, "clear", image=rec.name, frame=None, chunks=len(files))
            self._retire(files, intent)
        self._collect()
        return counts

    def _commit(self, rec: ImageRecord, frames: list[int], update, event: str, entry,
                replaces_all: bool = False, needs_old: bool = True) -> Counts:
        """Write new label files for ``frames``, then switch their pointers, objects, counts and
        the journal entry in one transaction; on failure remove the new files and say so.

        ``update(t, i, old_ids, old_prov, old_classes, next_id)`` returns the new plane
        ``(ids, provenance, classes)``; ``next_id`` is above every id the image has used. A
        commit that ``replaces_all`` pixels also replaces an unreadable old file (the way out);
        one that does not ``needs_old`` planes is given empty ones (no file is read).
        """
        iid = self._ids[rec.name]
        new_files: list[Path] = []
        with self._mutex:
            with self._writing(event, rec, new_files):
                old = dict(self._db.execute("SELECT frame, file FROM planes WHERE image = ?", (iid,)))
                next_id = self._next_id(self._db, iid)
                n_classes = self.n_classes
                rows, object_rows = [], []
                names = {t: f"i{iid:06d}-t{t:05d}-{secrets.token_hex(6)}.npz" for t in frames}
                intent = self._intend(new_files, names.values(), (old[t] for t in frames if t in old))
                for i, t in enumerate(frames):
                    old_classes = dict(self._db.execute("SELECT id, class FROM objects WHERE image = ? AND frame = ?",
                                                        (iid, t)))
                    old_ids = old_prov = None
                    if t in old and needs_old:
                        try:
                            old_ids, old_prov = self._read_file(rec, old[t], n_classes, old_classes)
                        except CorruptFileError:
                            if not replaces_all:
                                raise
                    if old_ids is None:
                        old_ids, old_prov = np.zeros(rec.shape, _INST_DTYPE), np.zeros(rec.shape, _PROV_DTYPE)
                        old_classes = {}
                    new_ids, new_prov, new_classes = update(t, i, old_ids, old_prov, old_classes, next_id)
                    objs = inst.objects(new_ids, new_classes, new_prov)
                    if objs:
                        next_id = max(next_id, objs[-1].id + 1)
                    object_rows.extend((iid, t, o.id, o.cls, o.area, o.provenance, *o.bbox, *o.centroid)
                                       for o in objs)
                    rel = names[t]
                    path = self.root / "labels" / rel
                    new_files.append(path)
                    _write_npz(path, new_ids, new_prov)
                    c = Counts.of(new_prov)
                    rows.append((iid, t, rel, c.unlabelled, c.human, c.machine, c.pseudo, c.simulated))
            try:
                with self._transaction(f"{event} of {rec.name!r}") as db:
                    db.executemany("INSERT OR REPLACE INTO planes(image, frame, file, unlabelled, human, machine, "
                                   "pseudo, simulated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    db.executemany("DELETE FROM objects WHERE image = ? AND frame = ?", [(iid, t) for t in frames])
                    db.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", object_rows)
                    db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (iid, next_id))
                    counts = self._counts_of(db, rec)
                    self._journal(db, event, **entry(counts))
            except BaseException:
                self._discard(new_files)
                raise
            self._retire((old[t] for t in frames if t in old), intent)
        self._collect()
        return counts

    @staticmethod
    def _next_id(db: sqlite3.Connection, iid: int) -> int:
        """Above every object id image ``iid`` has used or handed out (ids are never reused, so
        an undo or a frame of a time-lapse never meets an id that meant another object)."""
        mark = db.execute("SELECT next_id FROM marks WHERE image = ?", (iid,)).fetchone()
        top = db.execute("SELECT max(id) FROM objects WHERE image = ?", (iid,)).fetchone()[0]
        return max(int(mark[0]) if mark else 1, int(top or 0) + 1)

    def reserve_ids(self, image: str | int, n: int = 1) -> int:
        """Hand out ``n`` new object ids of ``image`` (returns the first): ids the dock gives
        objects a person makes, which no machine commit will take."""
        self._writable()
        rec = self.record(image)
        if not 1 <= n <= 1 << 20:
            raise InputError(f"reserve between 1 and {1 << 20} ids, not {n}")
        iid = self._ids[rec.name]
        with self._transaction(f"new object ids of {rec.name!r}") as db:
            first = self._next_id(db, iid)
            if first + n - 1 > inst.MAX_ID:
                raise InputError(f"{rec.name!r} has used up its object ids; export and import it to renumber")
            db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (iid, first + n))
        return first

    def _other_frames(self, iid: int, frames: list[int]) -> dict[int, tuple[int, int]]:
        """``{id: (class, frame)}`` of the image's objects on frames other than ``frames``."""
        rows = self._db.execute("SELECT id, class, frame FROM objects WHERE image = ?", (iid,)).fetchall()
        return {oid: (cls, t) for oid, cls, t in rows if t not in frames}

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction on the index; a failure rolls it back and says so."""
        self._writable()
        with self._mutex:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except (sqlite3.Error, OSError) as err:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise CommitError(f"{what} rolled back, nothing changed: the project index "
                                  f"{self.root / DB_FILE} could not be written ({err})") from err
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _writing(self, event: str, rec, new_files: list[Path]):
        """Writing a commit's new label files (``new_files``, appended as they are made): on any
        failure they are removed, and an OSError becomes a CommitError naming the file."""
        try:
            yield
        except OSError as err:
            self._discard(new_files)
            raise CommitError(f"{event} of {rec.name!r} rolled back, nothing changed: cannot write "
                              f"{err.filename or (new_files[-1] if new_files else 'a label file')} "
                              f"({err.strerror or err})") from err
        except BaseException:
            self._discard(new_files)
            raise

    def _intend(self, files: list[Path], new, old) -> Path:
        """Before a commit writes anything: note the label files it may write (``new``) and
        replace (``old``), relative to ``labels/``, in a file of its own in ``labels/``, which is
        appended to ``files`` (a failed commit removes it with its new files; :meth:`_retire`
        keeps it until the replaced files are deleted). Opening after a crash deletes only the
        unreferenced label files a note names (:meth:`_recover`). Not synced: a note lost with
        the power makes its files unexplained, which are then kept aside, never deleted."""
        path = self.root / "labels" / f".commit-{secrets.token_hex(6)}.json"
        files.append(path)
        with open(path, "x", encoding="utf-8") as fh:
            json.dump({"new": list(new), "old": list(old)}, fh)
        return path

    def _retire(self, rels, intent: Path) -> None:
        """Queue the label files a commit replaced (paths relative to ``labels/``) for deletion,
        and its note (:meth:`_intend`) for deletion after them; a tampered pointer names no file
        of ours, so there is nothing to delete, and a file that more than one entry pointed at
        is kept (opening sets it aside once no entry points at it). The note is renamed
        ``….done.json``: the commit went through (what :meth:`_recover` reads from it)."""
        done = intent.with_name(intent.name[:-len(".json")] + _DONE_SUFFIX)
        try:
            os.replace(intent, done)
            intent = done
        except OSError:
            pass  # the pending note stays: recovery then tells from the index whether the commit went through
        self._intents.append(intent)
        for rel in rels:
            if rel in self._shared:
                continue
            try:
                self._garbage.append(self._label_path(rel))
            except CorruptFileError:
                pass

    @staticmethod
    def _discard(files: list[Path]) -> None:
        for f in files:
            try:
                f.unlink()
            except OSError:
                pass

    def _collect(self) -> None:
        """Delete replaced label files unless a reader holds a snapshot (then keep them for later),
        then the notes of the commits that replaced them."""
        if self._db is None or not (self._garbage or self._intents):
            return
        with self._mutex:
            if self._garbage:
                fd = os.open(self.root / DB_FILE, os.O_RDONLY)
                try:
                    if not _flock(fd, exclusive=True, block=False):
                        return
                    garbage, self._garbage = self._garbage, []
                    self._discard(garbage)
                finally:
                    os.close(fd)
            intents, self._intents = self._intents, []
            self._discard(intents)

    def _recover(self) -> None:
        """After a crash: remove temporary files, and the label files that no entry points at
        which an unfinished commit's note (:meth:`_intend`) says it wrote or replaced. A label
        file that no entry names and no note explains lost its entry (a damaged or edited index):
        it holds someone's labels, so it is moved into ``orphaned-labels/<time>/`` (its path under
        ``labels/`` kept), journalled and warned about, never deleted."""
        removed = 0
        for folder in (self.root, self.root / "labels", self.root / "models"):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    try:
                        p.unlink()
                        removed += 1
                    except OSError:
                        pass
        labels = self.root / "labels"
        # a chunk folder's leftovers; a link named like one (a tampered project) is not followed
        for folder in (d for d in labels.iterdir() if d.name.endswith(".slide") and not d.is_symlink()
                       and d.is_dir()) if labels.is_dir() else ():
            for p in folder.glob(".*.tmp"):
                try:
                    p.unlink()
                    removed += 1
                except OSError:
                    pass
        referenced = set()
        for (rel,) in self._db.execute("SELECT file FROM planes UNION ALL SELECT file FROM chunks"):
            try:
                referenced.add(str(self._label_path(rel)))
            except CorruptFileError:
                pass  # a tampered pointer: reading that image says so; nothing outside is touched
        notes = sorted(labels.glob(_INTENT_GLOB)) if labels.is_dir() else []
        explained = set()
        for note in notes:
            try:
                data = json.loads(note.read_text(encoding="utf-8"))
                new, old = self._noted(data["new"]), self._noted(data["old"])
            except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
                continue  # cut short before its commit wrote anything (or not ours): it explains nothing
            written = [p for p in new if os.path.lexists(p)]
            # a commit that writes no file (clearing a slide) went through when its transaction
            # took every file it replaces out of the index
            removes_only = not new and old and not any(p in referenced for p in old)
            if note.name.endswith(_DONE_SUFFIX) or any(p in referenced for p in written) or removes_only:
                explained.update(old)  # the commit went through: the files it replaced are garbage (a
                # file it wrote that no entry names lost its entry since: not explained, kept aside)
            else:
                explained.update(written)  # it never went through: what it wrote is garbage (a file it
                # would have replaced that no entry names lost its entry: not explained, kept aside)
        orphans = [p for p in labels.rglob("*.npz") if str(p) not in referenced] if labels.is_dir() else []
        garbage = [p for p in orphans if str(p) in explained]
        unexplained = [p for p in orphans if str(p) not in explained]
        self._garbage.extend(garbage)
        self._intents.extend(notes)
        self._collect()
        removed += len(garbage) - len(self._garbage)
        folder, moved = self._set_aside(unexplained)
        if removed or moved:
            self.log("recovered", removed_files=removed, **(dict(set_aside=moved, folder=folder) if moved else {}))
        if moved:
            import warnings

            warnings.warn(f"{self.root}: {moved} label file{'s' if moved > 1 else ''} that the project index does not "
                          f"name (their entries were lost: a damaged or edited {DB_FILE}) were set aside in "
                          f"{self.root / folder}, not deleted; restore {DB_FILE} from a backup and move them back "
                          "into labels/ to see those labels again", UserWarning, stacklevel=3)

    def _noted(self, rels) -> list[str]:
        """The label files (as strings, as ``_recover`` compares them) a commit's note names."""
        if not isinstance(rels, list):
            raise TypeError("a list of names")
        out = []
        for rel in rels:
            try:
                out.append(str(self._label_path(rel)))
            except (CorruptFileError, TypeError):
                pass  # a name outside labels/: nothing of ours to delete
        return out

    def _set_aside(self, files: list[Path]) -> tuple[str, int]:
        """Move label files the index does not explain into a new ``orphaned-labels/<time>/``,
        each at its path under ``labels/``; returns that folder (relative to the root) and how
        many were moved (a file that cannot be moved stays where it is)."""
        if not files:
            return "", 0
        labels = self.root / "labels"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.root / ORPHANS_DIR / stamp
        n = 0
        while folder.exists():
            n += 1
            folder = self.root / ORPHANS_DIR / f"{stamp}-{n}"
        moved = 0
        for p in files:
            target = folder / p.relative_to(labels)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, target)
                moved += 1
            except OSError:
                pass
        if moved:
            (folder / "README.txt").write_text(
                f"Label files found in labels/ on {time.strftime('%Y-%m-%d %H:%M:%S')} that no entry of the project "
                f"index ({DB_FILE}) named and no unfinished commit explained: their entries were lost (a damaged or "
                f"edited {DB_FILE}). They hold labels, so they were kept here, at their paths under labels/. To get "
                f"them back, restore {DB_FILE} from a backup and move these files back into labels/.\n")
        return folder.relative_to(self.root).as_posix(), moved

    def copy_to(self, dest: str | os.PathLike) -> Path:
        """Copy the project, as of one snapshot, into the new folder ``dest``: index, label files,
        checkpoints, and the images where the project holds them (referenced ones stay where
        they are). Returns the copy's root."""
        dest = Path(dest).expanduser().resolve()
        if dest.exists() and any(dest.iterdir()):
            raise ProjectError(f"{dest} exists and is not empty; choose a new folder for the copy")
        for sub in ("labels", "models", "cache"):
            (dest / sub).mkdir(parents=True, exist_ok=True)
        with self._reader() as db:
            settings = dict(db.execute("SELECT key, value FROM settings"))
            planes = db.execute("SELECT image, frame, file, unlabelled, human, machine, pseudo, simulated "
                                "FROM planes").fetchall()
            objects = db.execute("SELECT * FROM objects").fetchall()
            journal = self.journal()  # the same snapshot (nested), with its check of each entry
            slide_ids = {self._ids[n] for n in self._slides}
            slides = {"slides": [(self._ids[n], c) for n, c in self._slides.items()],
                      "chunks": db.execute("SELECT * FROM chunks").fetchall() if slide_ids else [],
                      "chunk_objects": db.execute("SELECT * FROM chunk_objects").fetchall() if slide_ids else []}
            for row in slides["chunks"]:
                target = _inside(dest / "labels", row[4], "label file", self.root / DB_FILE)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self._label_path(row[4]), target)
            for row in planes:
                if row[0] in slide_ids:
                    continue  # its chunks are copied above
                target = _inside(dest / "labels", row[2], "label file", self.root / DB_FILE)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self._label_path(row[2]), target)
            classes = self._read_classes(db)
        for ckpt in self.checkpoint_dir.glob("*.pt"):
            shutil.copy2(ckpt, dest / "models" / ckpt.name)
        if not Path(settings["image_root"]).is_absolute():
            shutil.copytree(self.image_root, _inside(dest, settings["image_root"], "image root", dest))
        journal.append(_entry("copied", source=str(self.root)))
        index = {self._ids[r.name]: i for i, r in enumerate(self._records)}  # the copy numbers images 0..N-1
        planes = [(index[row[0]], *row[1:]) for row in planes]
        objects = [(index[row[0]], *row[1:]) for row in objects]
        slides = {k: [(index[row[0]], *row[1:]) for row in rows if row[0] in index] for k, rows in slides.items()}
        _build_db(dest / DB_FILE, dict(settings, name=dest.name), classes, self._records, planes, objects, journal,
                  slides=slides)
        io.atomic_write_json(dest / PROJECT_FILE, {"format": FORMAT,
                                                   "version": SLIDE_VERSION if self._slides else VERSION})
        return dest

    # ------------------------------------------------------------------ provenance counts
    def _counts_of(self, db: sqlite3.Connection, rec: ImageRecord) -> Counts:
        row = db.execute("SELECT count(*), total(unlabelled), total(human), total(machine), total(pseudo), "
                         "total(simulated) FROM planes WHERE image = ?", (self._ids[rec.name],)).fetchone()
        missing = (rec.frames - row[0]) * rec.shape[0] * rec.shape[1]
        return Counts(int(row[1]) + missing, *(int(v) for v in row[2:]))

    def counts(self, image: str | int) -> Counts:
        """Provenance counts of one image, from the index."""
        rec = self.record(image)
        with self._reader() as db:
            return self._counts_of(db, rec)

    def all_counts(self) -> dict[str, Counts]:
        """Provenance counts of every image, by name, from one snapshot (one query)."""
        with self._reader() as db:
            rows = {iid: r for iid, *r in db.execute(
                "SELECT image, count(*), total(unlabelled), total(human), total(machine), total(pseudo), "
                "total(simulated) FROM planes GROUP BY image")}
        out = {}
        for rec in self._records:
            n, u, *rest = rows.get(self._ids[rec.name], (0, 0, 0, 0, 0, 0))
            out[rec.name] = Counts(int(u) + (rec.frames - n) * rec.shape[0] * rec.shape[1], *(int(v) for v in rest))
        return out

    def total_counts(self) -> Counts:
        total = Counts()
        for c in self.all_counts().values():
            total = total + c
        return total

    # ------------------------------------------------------------------ batch prediction results
    def save_result(self, image: str | int, model: str, scores: dict[str, float], features: np.ndarray,
                    cache: str | os.PathLike) -> None:
        """Save one image's prediction result of ``model`` (a token): its uncertainty scores, its
        pooled features and where its probabilities are cached (inside ``cache/``); journalled."""
        self._writable()
        rec = self.record(image)
        if not isinstance(model, str) or not re.fullmatch(r"[0-9a-f]{4,64}", model):
            raise InputError(f"a model token is hex digits, got {model!r}")
        feats = np.asarray(features, np.float32).ravel()
        rel = Path(cache).resolve().relative_to(self.cache_dir.resolve()).as_posix()
        payload = json.dumps({k: float(v) for k, v in scores.items()})
        with self._transaction(f"result of {rec.name!r}") as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                       (self._ids[rec.name], model, payload, feats.tobytes(), rel))
            self._journal(db, "predicted", image=rec.name, model=model)

    def drop_results(self, keep: str) -> int:
        """Forget the saved results of every model but ``keep``; returns how many rows went."""
        self._writable()
        with self._transaction("dropping old results") as db:
            return db.execute("DELETE FROM results WHERE model != ?", (keep,)).rowcount

    def results(self, model: str, features: bool = True) -> dict[str, dict]:
        """The saved prediction results of ``model``, by image name: ``scores`` (dict), ``features``
        (float32; None unless ``features``: what ranking by a score and skipping finished images
        need is a few hundred bytes an image, the features 1.7 KB more) and ``cache`` (the path of its
        probabilities); checked as untrusted input."""
        names = {iid: name for name, iid in self._ids.items()}
        with self._reader() as db:
            rows = db.execute(f"SELECT image, scores, {'features' if features else 'NULL'}, cache FROM results "
                              "WHERE model = ?", (model,)).fetchall()
        out = {}
        where = self.root / DB_FILE
        for iid, scores, feats, rel in rows:
            if iid not in names:
                continue
            try:
                scores = json.loads(scores)
                if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
                    raise ValueError("scores are not numbers")
                if features and (not isinstance(feats, bytes) or len(feats) % 4 or len(feats) > 1 << 20):
                    raise ValueError("features are not float32")
            except (ValueError, TypeError) as err:
                raise CorruptFileError(f"{where}: the result of {names[iid]!r} is malformed ({err})") from err
            out[names[iid]] = {"scores": {str(k): float(v) for k, v in scores.items()},
                               "features": np.frombuffer(feats, np.float32).copy() if features else None,
                               "cache": _inside(self.cache_dir, rel, "cached prediction", where)}
        return out

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
        check_name(name, "checkpoint name")
        import torch

        path = self.checkpoint_dir / f"{name}.pt"
        io.atomic_write(path, lambda fh: torch.save(state, fh))
        self.log("checkpoint", name=name)
        return path

    def load_checkpoint(self, name: str = "latest") -> Any | None:
        """Load models/<name>.pt (weights only, no code execution) or None if absent."""
        check_name(name, "checkpoint name")
        path = self.checkpoint_dir / f"{name}.pt"
        if not path.exists():
            return None
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise CorruptFileError(f"checkpoint {path} is unreadable ({err}); delete it to retrain") from err

    # ------------------------------------------------------------------ journal
    def log(self, event: str, **data: Any) -> None:
        """Append one event to the journal (durable before this returns)."""
        if self.readonly:
            return
        with self._transaction(f"journal entry {event!r}") as db:
            self._journal(db, event, **data)

    @staticmethod
    def _journal(db: sqlite3.Connection, event: str, **data: Any) -> None:
        e = _entry(event, **data)
        db.execute("INSERT INTO journal(t, event, data) VALUES (?, ?, ?)",
                   (e.pop("t"), e.pop("event"), json.dumps(e, default=str)))

    def journal(self) -> list[dict]:
        """All journal entries, oldest first."""
        with self._reader() as db:
            rows = db.execute("SELECT t, event, data FROM journal ORDER BY seq").fetchall()
        out = []
        for t, event, data in rows:
            try:
                extra = json.loads(data)
            except (TypeError, json.JSONDecodeError):
                extra = {"unreadable": str(data)[:200]}
            out.append({"t": t, "event": event, **(extra if isinstance(extra, dict) else {})})
        return out

    # ------------------------------------------------------------------ helpers
    def _writable(self) -> None:
        if self.readonly:
            raise ProjectError(f"project {self.root} is open read-only")
        if self._lock is None:
            raise ProjectError(f"project {self.root} is closed")

    def iter_labelled(self, min_human: int = 1) -> Iterator[ImageRecord]:
        """Records with at least ``min_human`` human-labelled pixels."""
        counts = self.all_counts()
        for rec in self._records:
            if counts[rec.name].human >= min_human:
                yield rec


def _renumber(ids: np.ndarray, classes: dict[int, int], first: int) -> tuple[np.ndarray, dict[int, int]]:
    """``ids`` with its objects numbered ``first``, ``first + 1``, ... (machine objects are new objects)."""
    present = inst.ids_of(ids)
    if not present.size:
        return ids, {}
    if first + len(present) - 1 > inst.MAX_ID:
        raise InputError(f"object ids ran past {inst.MAX_ID}; renumber the image's objects (export and import)")
    pos = np.searchsorted(present, ids)
    new = np.where(ids == 0, 0, first + np.minimum(pos, len(present) - 1)).astype(_INST_DTYPE)
    return new, {first + k: classes[int(o)] for k, o in enumerate(present)}


def is_large_record(rec: ImageRecord) -> bool:
    """Whether a new project stores the labels of ``rec`` in chunks: one plane of more than
    :data:`napari_hitl.io.LAZY_PIXELS` pixels (what :func:`napari_hitl.io.load_image` opens lazily)."""
    return rec.frames == 1 and rec.shape[0] * rec.shape[1] > io.LAZY_PIXELS


def _chunk_range(lo: int, hi: int, chunk: int) -> range:
    """The chunk indices along one axis that pixels ``lo:hi`` cover."""
    return range(lo // chunk, (hi - 1) // chunk + 1)


def is_project(path: str | os.PathLike) -> bool:
    """True if ``path`` is a project folder."""
    return (Path(path) / PROJECT_FILE).is_file()


# ---------------------------------------------------------------------------- storage helpers

def _entry(event: str, **data: Any) -> dict:
    return {"t": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **data}


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, full durability."""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        reason = str(err)
        try:
            if os.statvfs(path.parent).f_bavail == 0:
                reason += "; no space left on the disk holding it (free some and retry)"
        except (OSError, AttributeError):
            pass
        raise CorruptFileError(f"{path} is not a readable project index ({reason})") from err
    return db


def _write_npz(path: Path, ids: np.ndarray, prov: np.ndarray, overview: int = 0) -> None:
    """An .npz as ``np.load`` reads it, deflated at level 1: a 512x512 plane in ~5 ms, not ~30.
    ``overview`` (a chunk of a large image): also every ``overview``-th pixel of both arrays."""
    import zipfile

    buf = _io.BytesIO()
    arrays = [("instances", ids), ("provenance", prov)]
    if overview:
        arrays += [("overview_instances", ids[::overview, ::overview]),
                   ("overview_provenance", prov[::overview, ::overview])]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for key, arr in arrays:
            with z.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    io.atomic_write_bytes(path, buf.getvalue())


def _build_db(path: Path, settings: dict, classes: list[ClassInfo], records: list[ImageRecord],
              planes: list[tuple], objects: list[tuple], journal: list[dict],
              slides: dict[str, list[tuple]] | None = None) -> None:
    """Write a complete index to ``path`` through a temporary file and one rename; ``slides``
    holds the rows of the large images' tables (``slides``, ``chunks``, ``chunk_objects``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        db = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            db.executescript(_SCHEMA + _SLIDE_SCHEMA)
            db.execute("BEGIN")
            for table, rows in (slides or {}).items():
                if table not in ("slides", "chunks", "chunk_objects"):
                    raise ValueError(f"no table {table!r}")
                for row in rows:
                    db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
            settings = dict(settings, format_version=VERSION)
            db.executemany("INSERT INTO settings VALUES (?, ?)", [(k, str(v)) for k, v in settings.items()])
            db.executemany("INSERT INTO classes VALUES (?, ?, ?, ?)",
                           [(c.id, c.name, json.dumps(list(c.color)), c.kind) for c in classes])
            db.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(i, r.name, json.dumps(list(r.files)), r.shape[0], r.shape[1], r.channels, r.frames,
                             r.dtype) for i, r in enumerate(records)])
            db.executemany("INSERT INTO planes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", planes)
            db.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", objects)
            marks: dict[int, int] = {}
            for row in objects:
                marks[row[0]] = max(marks.get(row[0], 1), int(row[2]) + 1)
            db.executemany("INSERT INTO marks VALUES (?, ?)", sorted(marks.items()))
            for e in journal:
                e = dict(e)
                db.execute("INSERT INTO journal(t, event, data) VALUES (?, ?, ?)",
                           (e.pop("t", ""), e.pop("event", "?"), json.dumps(e, default=str)))
            db.execute("COMMIT")
        finally:
            db.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, io.file_mode())
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if stale.exists():
                stale.unlink()
        os.replace(tmp, path)
        io.fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


_PARTIAL = {DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "labels", "models", "cache", "images", ".lock"}


def _half_created(root: Path) -> bool:
    """True if ``root`` holds only what an interrupted :meth:`Project.create` leaves."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return False
    if not entries or (root / PROJECT_FILE).exists():
        return False
    for p in entries:
        if p.name.endswith(".tmp"):
            continue
        if p.name not in _PARTIAL:
            return False
        if p.name in ("labels", "models") and p.is_dir() and any(p.iterdir()):
            return False
    return True


def _clear_half_created(root: Path) -> None:
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# ---------------------------------------------------------------------------- migration

def _convert_plane(root: Path, iid: int, t: int, labels: np.ndarray, prov: np.ndarray,
                   kinds: list[str], next_id: int = 1) -> tuple[tuple, list[tuple]]:
    """A class-map plane of an older format as an instance plane (new ids from ``next_id``, so
    the frames of a stack never share one): writes its new label file and returns its
    ``planes`` row and ``objects`` rows."""
    ids, classes = inst.from_semantic(labels, kinds, where=prov != UNLABELLED, next_id=next_id)
    rel = f"i{iid:06d}-t{t:05d}-{secrets.token_hex(6)}.npz"
    _write_npz(root / "labels" / rel, ids, prov)
    c = Counts.of(prov)
    objects = [(iid, t, o.id, o.cls, o.area, o.provenance, *o.bbox, *o.centroid)
               for o in inst.objects(ids, classes, prov)]
    return (iid, t, rel, c.unlabelled, c.human, c.machine, c.pseudo, c.simulated), objects


def _read_old_plane(path: Path, rec: ImageRecord, n_classes: int, max_code: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-map label file of format 1 or 2, checked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            labels, prov = np.asarray(z["labels"]), np.asarray(z["provenance"])
        if labels.shape != rec.shape or prov.shape != rec.shape:
            raise ValueError(f"shape {labels.shape}, expected {rec.shape}")
        if labels.dtype != _LABEL_DTYPE or prov.dtype != _PROV_DTYPE or (prov.size and prov.max() > max_code) \
                or (labels.size and labels.max() >= n_classes):
            raise ValueError("labels or provenance out of range")
    except Exception as err:  # noqa: BLE001 - a bad label file is named, the migration stops
        raise CorruptFileError(f"label file {path} cannot be migrated ({err}); move it aside and "
                               "open the project again to migrate the rest") from err
    return labels, prov


def _db_version(path: Path) -> int:
    """The format an index file was built for (2 if it does not say), 0 if there is none."""
    if not path.is_file():
        return 0
    db = _connect(path, readonly=True)
    try:
        row = db.execute("SELECT value FROM settings WHERE key = 'format_version'").fetchone()
    except sqlite3.DatabaseError:
        row = None
    finally:
        db.close()
    try:
        return int(row[0]) if row else 2
    except (TypeError, ValueError):
        return 2


def _migrate(root: Path, meta: dict, version: int) -> None:
    """Bring a project of format 1 or 2 to the current one, once, under the writer's lock.

    Old label files are read and checked, written anew as instance planes (each connected
    area of a thing class one object, each stuff class one area), a complete new index is
    built beside the old one and switched in by one rename, the old files move to
    ``backup-v<N>/`` and ``project.json`` is rewritten last. A crash at any point leaves a
    project that opens and finishes the migration (or redoes it) on the next open.
    """
    backup = root / f"backup-v{version}"
    if _db_version(root / DB_FILE) != VERSION:
        if version == 1:
            _migrate_v1(root, meta)
        else:
            _migrate_v2(root, backup)
    # the new index is in place: move every label file it does not point to into the backup
    db = _connect(root / DB_FILE, readonly=True)
    try:
        current = {rel for (rel,) in db.execute("SELECT file FROM planes")}
    finally:
        db.close()
    labels = root / "labels"
    for p in sorted(labels.rglob("*.npz")) if labels.is_dir() else []:
        rel = p.relative_to(labels).as_posix()
        if rel not in current:
            target = backup / "labels" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
    for d in sorted((d for d in labels.rglob("*") if d.is_dir()), reverse=True) if labels.is_dir() else []:
        try:
            d.rmdir()  # the per-stack folders of format 1, now empty
        except OSError:
            pass
    if version == 1:
        backup.mkdir(exist_ok=True)
        if not (backup / PROJECT_FILE).exists():
            shutil.copy2(root / PROJECT_FILE, backup / PROJECT_FILE)
        for name in ("images.json", "journal.jsonl", "labels/summary.json"):
            if (root / name).exists():
                os.replace(root / name, backup / Path(name).name)
    io.atomic_write_json(root / PROJECT_FILE, {"format": FORMAT, "version": VERSION})


def _migrate_v2(root: Path, backup: Path) -> None:
    """Format 2 (class maps in the SQLite index) to instances; the old index is kept in ``backup``."""
    path = root / DB_FILE
    old = _connect(path, readonly=False)
    try:
        old.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file before it is copied
        backup.mkdir(exist_ok=True)
        copy = sqlite3.connect(str(backup / DB_FILE))
        try:
            old.backup(copy)
        finally:
            copy.close()
        settings = {k: v for k, v in old.execute("SELECT key, value FROM settings") if k != "format_version"}
        class_rows = old.execute("SELECT id, name, color FROM classes ORDER BY id").fetchall()
        image_rows = old.execute("SELECT id, name, files, height, width, channels, frames, dtype "
                                 "FROM images ORDER BY id").fetchall()
        plane_rows = old.execute("SELECT image, frame, file FROM planes ORDER BY image, frame").fetchall()
        journal = [{"t": t, "event": e, **(json.loads(d) if d.startswith("{") else {})}
                   for t, e, d in old.execute("SELECT t, event, data FROM journal ORDER BY seq")]
    except (sqlite3.DatabaseError, json.JSONDecodeError, TypeError, AttributeError) as err:
        raise CorruptFileError(f"{path} cannot be migrated: {err}") from err
    finally:
        old.close()
    try:
        classes = [ClassInfo(int(cid), str(name), tuple(int(v) for v in json.loads(color)),
                             STUFF if int(cid) == 0 else THING) for cid, name, color in class_rows]
        records = {int(iid): ImageRecord(str(name), tuple(json.loads(files)), (int(h), int(w)), int(c), int(t),
                                         str(dtype)) for iid, name, files, h, w, c, t, dtype in image_rows}
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"{path} has a malformed entry: {err}") from err
    if [c.id for c in classes] != list(range(len(classes))):
        raise CorruptFileError(f"{path}: class ids must be 0..N-1 in order")
    kinds = [c.kind for c in classes]
    order = sorted(records)
    index = {iid: k for k, iid in enumerate(order)}
    planes, objects, next_ids = [], [], {}
    for iid, t, rel in plane_rows:
        if iid not in records:
            continue
        rec = records[iid]
        labels, prov = _read_old_plane(_inside(root / "labels", rel, "label file", path), rec, len(classes), SIMULATED)
        row, objs = _convert_plane(root, index[iid], int(t), labels, prov, kinds, next_ids.get(iid, 1))
        next_ids[iid] = max([next_ids.get(iid, 1), *(o[2] + 1 for o in objs)])
        planes.append(row)
        objects.extend(objs)
    journal.append(_entry("migrated", from_version=2, to_version=VERSION, images=len(records),
                          label_files=len(planes), objects=len(objects),
                          note="each connected area of a class became one object; classes other than "
                               "the background are things (objects)"))
    _build_db(path, settings, classes, [records[i] for i in order], planes, objects, journal)


def _read_v1_journal(path: Path) -> list[dict]:

    """Entries of a first-format journal; a torn line loses only itself, not its neighbour."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder, out, pos = json.JSONDecoder(), [], 0
    while True:
        start = text.find('{"t"', pos)
        if start < 0:
            return out
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        pos = end


def _migrate_v1(root: Path, meta: dict) -> None:
    """Format 1 (JSON index, one class-map .npz per image) to the SQLite index with instances.

    The old files are read and checked and the new index is built beside them and switched in
    by one rename; :func:`_migrate` then moves the old files to ``backup-v1/``.
    """
    where = root / "images.json"
    try:
        raw = io.read_json(where)
        records = [ImageRecord.from_json(d) for d in raw]
        classes = [ClassInfo(int(c["id"]), str(c["name"]), tuple(int(v) for v in c["color"]),
                             STUFF if int(c["id"]) == 0 else THING) for c in meta["classes"]]
        image_root = str(meta["image_root"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptFileError(f"{where} or {root / PROJECT_FILE} has a malformed entry: {err}") from err
    if [c.id for c in classes] != list(range(len(classes))):
        raise CorruptFileError(f"{root / PROJECT_FILE}: class ids must be 0..N-1 in order")
    for c in classes:
        try:
            check_name(c.name, "class name", path_part=False)
        except InputError as err:
            raise CorruptFileError(f"{root / PROJECT_FILE}: {err}") from None
    original_names = [r.name for r in records]
    records = [r if len(r.name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES else
               ImageRecord(short_name(r.name), r.files, r.shape, r.channels, r.frames, r.dtype) for r in records]
    for r, old_name in zip(records, original_names):
        try:
            check_name(r.name)
            if "/" in old_name or "\\" in old_name or old_name in (".", ".."):
                raise InputError(f"image name {old_name[:60]!r} holds a path")
            for f in r.files:
                _inside(Path("."), f, "image file", where)
        except InputError as err:
            raise CorruptFileError(f"{where}: {err}") from None
    if len({r.name for r in records}) != len(records):
        raise CorruptFileError(f"{where}: image names are not unique")
    kinds = [c.kind for c in classes]
    planes, objects = [], []
    for iid, (rec, old_name) in enumerate(zip(records, original_names)):
        next_id = 1
        for t in range(rec.frames):  # the old files are named after the image's original name
            rel = f"{old_name}/t{t:05d}.npz" if rec.is_stack else f"{old_name}.npz"
            path = _inside(root / "labels", rel, "label file", where)
            if not path.exists():
                continue
            labels, prov = _read_old_plane(path, rec, len(classes), PSEUDO)
            row, objs = _convert_plane(root, iid, t, labels, prov, kinds, next_id)
            next_id = max([next_id, *(o[2] + 1 for o in objs)])
            planes.append(row)
            objects.extend(objs)
    journal = _read_v1_journal(root / "journal.jsonl")
    journal.append(_entry("migrated", from_version=int(meta.get("version", 1)), to_version=VERSION,
                          images=len(records), label_files=len(planes), objects=len(objects)))
    settings = {"name": str(meta.get("name", root.name)), "created": str(meta.get("created", "")),
                "image_root": image_root}
    _build_db(root / DB_FILE, settings, classes, records, planes, objects, journal)
