"""Errors the user can act on. Each message names the file or value at fault."""


class HitlError(Exception):
    """Base class: an error caused by input or state the user can fix."""


class InputError(HitlError, ValueError):
    """Bad input: wrong shape, dtype, empty image, prompt outside the image, unknown class."""


class CorruptFileError(HitlError):
    """A file in a project or source folder cannot be read; the message names it."""


class ProjectLockedError(HitlError):
    """The project is already open for writing by another process."""


class ProjectError(HitlError):
    """Anything else wrong with a project folder (missing, foreign, wrong version)."""


class CommitError(ProjectError):
    """A write to the project failed and was rolled back: nothing changed; the message names
    the file and the reason (a full disk, a read-only folder)."""


class ExportError(HitlError):
    """An export could not be written (full disk, read-only target): the target is unchanged."""
