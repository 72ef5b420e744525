"""Where MixDesk keeps its files: platformdirs locations, overridable by environment variables.

``MIXDESK_DATA_DIR`` moves the data directory (models, conversations); the XDG variables
work as usual on Linux because platformdirs honours them.

Folders MixDesk creates are private (0700, as the XDG base directory spec asks), model
folders included, all through :func:`ensure_dir`; the files that may hold secrets or
conversations (logs, ``chats.sqlite``, settings, key files) are created 0600 through
:func:`private_file` and :func:`write_private_text`, and a download's own files through
:func:`open_private`, which never writes through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Literal

import platformdirs

from mixdesk import APP_NAME
from mixdesk.errors import MixdeskError


class UnsafeFileError(MixdeskError):
    """A file MixDesk was about to write is a symbolic link (or a FIFO, a device, a folder)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is a symbolic link or not a plain file, so MixDesk did not write to it "
            "(a download writes only files of its own); delete it and try again."
        )
        self.path = path


def data_dir() -> Path:
    """Return the data directory (models, chat database)."""
    override = os.environ.get("MIXDESK_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Return the configuration directory (settings)."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Return the cache directory (partial downloads, generated check models)."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    """Return the log directory (the app log and the engine logs)."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents, each 0700) if needed and return it."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=PRIVATE_DIR_MODE)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)  # raises the OSError that says why
    return path


def ensure_private_dir(path: Path) -> Path:
    """Like :func:`ensure_dir`, and take away other users' access if the folder is ours.

    For MixDesk's own folders (logs, settings, conversations), which older versions created
    with the default 0755.
    """
    ensure_dir(path)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


_WRITE_FLAGS = {
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "r+b": os.O_RDWR,
}


def open_private(path: Path, mode: Literal["ab", "wb", "r+b"]) -> BinaryIO:
    """Open ``path`` to write, never through a symbolic link; a new file is created 0600.

    A link planted where a download keeps its bytes (``FILE.part``) would otherwise send them
    into whatever file it names. ``O_NOFOLLOW`` refuses a link as the last part of the path
    and the file is checked on the open descriptor; the folders above it are MixDesk's own,
    made 0700 by :func:`ensure_dir`. ``O_NONBLOCK`` makes a planted FIFO fail at once instead
    of waiting for a reader.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link, a FIFO, a device or a folder.
        OSError: it cannot be opened.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = _WRITE_FLAGS[mode] | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | nonblock, PRIVATE_FILE_MODE)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # ENXIO: a FIFO
            raise UnsafeFileError(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(path)
        if sys.platform != "win32" and nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing, or tighten an existing file to 0600."""
    ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    _tighten(path, PRIVATE_FILE_MODE)
    return path


def write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, as a 0600 file.

    The new content goes to a temporary file beside ``path`` (created 0600) that then takes
    its place, so a crash leaves the old file or the new one, never half of one, and a file
    that was readable by others before is replaced by one that is not.
    """
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tighten(path: Path, mode: int) -> None:
    """Drop group and other permissions from ``path`` if this user owns it."""
    if sys.platform != "win32":  # Windows has no POSIX modes (ACLs there)
        try:
            info = path.stat()
            if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.getuid():
                path.chmod(stat.S_IMODE(info.st_mode) & mode)
        except OSError:
            pass
