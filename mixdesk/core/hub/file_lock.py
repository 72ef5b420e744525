"""A lock held through a file, across threads and processes: one download per target at a time.

POSIX ``flock`` (Windows: ``msvcrt.locking``) on a small file next to what it guards. The
operating system drops the lock when its holder exits, ``kill -9`` included, so a crash
never leaves a stale lock behind. The holder deletes the lock file on release; whoever was
waiting on the old file notices (its inode no longer matches the path) and locks the new one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from mixdesk import paths


class FileLock:
    """An exclusive lock on ``path`` (created when needed).

    Args:
        path: the lock file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, *, cancel: threading.Event | None = None, wait_s: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait_s`` seconds (0: try once; ``inf``: until it is free).

        Returns:
            Whether the lock is now held (False when someone else holds it, or ``cancel`` was set).
        """
        deadline = time.monotonic() + wait_s
        while True:
            if self._try_once():
                return True
            if time.monotonic() >= deadline:
                return False
            if cancel is not None:
                if cancel.wait(0.1):
                    return False
            else:
                time.sleep(0.1)

    def release(self) -> None:
        """Give the lock back (and remove the lock file)."""
        if self._fd is None:
            return
        # Deleted while still held (see the module docstring); Windows cannot delete an open
        # file, and the next holder reuses it.
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        _unlock(self._fd)
        os.close(self._fd)
        self._fd = None

    def _try_once(self) -> bool:
        paths.ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            if not _lock(fd):
                os.close(fd)
                return False
            if sys.platform != "win32":
                # The previous holder may have deleted the file between our open and our lock.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    _unlock(fd)
                    os.close(fd)
                    return self._try_once()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
