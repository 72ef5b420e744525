"""The KV state cache on disk: one state file per conversation and key, within a size budget.

Layout: ``DIRECTORY/KEY-DIGEST/CONVERSATION-DIGEST.mdkv`` (:mod:`.kv_format` files), and
``DIRECTORY/secret``, the key of their checksums (32 random bytes, 0600). The folder per key
means a lookup reads only the headers of states saved with the same model and settings; a
conversation's file name is a hash of its cache key, so deleting a conversation deletes its
states under every key. Least recently used files (by modification time, touched when a
state is used) go first when the budget is exceeded. A file that fails any check is deleted
the moment it is read.

Pure Python: the engine process hands the bytes to llama.cpp (:mod:`.kv_cache`); the app uses
:class:`KvStore` to report used bytes, clear, and delete a conversation's or a model's states.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixdesk import paths
from mixdesk.core.engine.kv_format import (
    KvKey,
    StateFileError,
    StateHeader,
    digest,
    read_header,
    read_state,
    write_state,
)

log = logging.getLogger(__name__)

SUFFIX = ".mdkv"
#: The default disk budget (Settings' ``kv_cache_gib`` holds the user's).
DEFAULT_BUDGET_BYTES = 4 << 30
#: No state file is read past this size, whatever the budget.
MAX_FILE_BYTES = 64 << 30
_STALE_TMP_S = 3600.0


def default_directory() -> Path:
    """Where conversations' KV states are kept."""
    return paths.cache_dir() / "kv-states"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Match:
    """A saved state that shares ``shared`` leading tokens with a prompt."""

    path: Path
    header: StateHeader
    shared: int


class KvStore:
    """The state files in ``directory``.

    Args:
        directory: the cache folder (made 0700 when first written).
        budget_bytes: the most bytes its state files may take together.
    """

    def __init__(self, directory: Path, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._secret: bytes | None = None

    @property
    def max_file_bytes(self) -> int:
        """The largest state file read (or kept): the budget, at most :data:`MAX_FILE_BYTES`."""
        return min(self.budget_bytes, MAX_FILE_BYTES)

    def secret(self) -> bytes:
        """The checksum key of this cache, made once (a new one invalidates every file).

        Made in a temporary file and linked into place, so two writers at once (the engine's
        writer thread, another MixDesk process) end up with the same one.
        """
        if self._secret is None:
            path = self.directory / "secret"
            paths.ensure_private_dir(self.directory)
            value = _read_secret(path)
            if value is None:
                _unlink(path)  # missing, or not a key: every file made with it is void anyway
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".secret.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(secrets.token_bytes(32))
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)
                finally:
                    os.unlink(tmp)
                value = _read_secret(path)
            if value is None:
                raise OSError(f"{path} does not hold a 32-byte key")
            self._secret = value
        return self._secret

    def path_for(self, key: KvKey, conversation: str) -> Path:
        """The file of ``conversation``'s state under ``key``."""
        return self.directory / key.digest() / f"{digest(conversation)[:32]}{SUFFIX}"

    # -- writing ----------------------------------------------------------------------

    def save(self, header: StateHeader, state: bytes | memoryview) -> Path | None:
        """Keep a conversation's state (replacing its previous one under the same key), then
        evict the least recently used files past the budget. None when it is larger than
        the budget on its own, or the disk refused it (logged, never raised: a state is a
        cache)."""
        if header.file_size > self.max_file_bytes:
            log.info("a KV state of %d bytes exceeds the cache budget", header.file_size)
            return None
        path = self.path_for(header.key, header.conversation)
        try:
            secret = self.secret()
            paths.ensure_dir(path.parent)
            write_state(path, header, state, secret=secret)
        except OSError as err:
            log.warning("could not save a KV state to %s: %s", path, err)
            return None
        self.evict(keep=path)
        return path

    def evict(self, *, keep: Path | None = None) -> int:
        """Delete the least recently used files until the cache fits its budget; returns
        the bytes freed (``keep`` goes last)."""
        files = self._files()
        used = sum(size for _, size, _ in files)
        freed = 0
        files.sort(key=lambda f: (f[0] == keep, f[2]))
        for path, size, _ in files:
            if used - freed <= self.budget_bytes:
                break
            if _unlink(path):
                freed += size
        return freed

    # -- reading ----------------------------------------------------------------------

    def best(self, key: KvKey, prompt: Sequence[int]) -> Match | None:
        """The state saved under ``key`` sharing the longest prefix with ``prompt`` (at least
        one token). Only headers are read here; files that fail are deleted."""
        found: Match | None = None
        for path in self.candidates(key):
            header = self._header(path)
            if header is None:
                continue
            if header.key != key:
                self.reject(path, "saved for another model or other settings")
                continue
            shared = common_prefix(header.tokens, prompt)
            if shared and (found is None or shared > found.shared):
                found = Match(path, header, shared)
        return found

    def candidates(self, key: KvKey) -> list[Path]:
        """The files that may hold states saved under ``key``."""
        try:
            return sorted(
                p for p in (self.directory / key.digest()).iterdir() if p.suffix == SUFFIX
            )
        except OSError:
            return []

    def load(self, path: Path, key: KvKey) -> tuple[StateHeader, bytearray] | None:
        """A state file read whole and checked (deleted, and None, if it fails any check);
        it becomes the most recently used."""
        try:
            header, state = read_state(
                path, key=key, secret=self.secret(), max_bytes=self.max_file_bytes
            )
        except StateFileError as err:
            self.reject(path, err.reason)
            return None
        except OSError as err:
            log.warning("could not read the KV state %s: %s", path, err)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return header, state

    def _header(self, path: Path) -> StateHeader | None:
        try:
            return read_header(path, max_bytes=self.max_file_bytes)
        except StateFileError as err:
            self.reject(path, err.reason)
            return None

    def reject(self, path: Path, reason: str) -> None:
        """Log why ``path`` is not used, and delete it."""
        log.warning("KV state %s ignored and deleted: %s", path, reason)
        _unlink(path)

    # -- the app's view ---------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes the cache's state files take."""
        return sum(size for _, size, _ in self._files())

    def clear(self) -> int:
        """Delete every state file; returns the bytes freed."""
        return sum(size for path, size, _ in self._files() if _unlink(path))

    def delete_conversation(self, conversation: str) -> int:
        """Delete ``conversation``'s states under every key; returns the bytes freed."""
        name = f"{digest(conversation)[:32]}{SUFFIX}"
        return sum(size for path, size, _ in self._files() if path.name == name and _unlink(path))

    def delete_model(self, model_path: Path | str) -> int:
        """Delete the states computed with the model at ``model_path`` (any of its parts);
        returns the bytes freed. Headers are read whatever this store's budget (a file saved
        under a larger one is another model's state, not a damaged file)."""
        target = Path(model_path).resolve()
        freed = 0
        for path, size, _ in self._files():
            try:
                header = read_header(path, max_bytes=MAX_FILE_BYTES)
            except StateFileError:
                header = None
            if (header is None or Path(header.model_path).resolve() == target) and _unlink(path):
                freed += size
        return freed

    def _files(self) -> list[tuple[Path, int, float]]:
        """(path, size, modification time) of every state file; stale temporary files of an
        interrupted write are deleted on the way."""
        found = []
        now = time.time()
        try:
            folders = [p for p in self.directory.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            return []
        for folder in folders:
            with contextlib.suppress(OSError):
                for path in folder.iterdir():
                    info = path.lstat()
                    if path.suffix == SUFFIX:
                        found.append((path, info.st_size, info.st_mtime))
                    elif path.name.endswith(".tmp") and now - info.st_mtime > _STALE_TMP_S:
                        _unlink(path)
        return found


def _read_secret(path: Path) -> bytes | None:
    try:
        with paths.open_private(path, "r+b") as fh:
            value = fh.read(64)
    except FileNotFoundError:
        return None
    return value if len(value) == 32 else None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        log.warning("could not delete %s: %s", path, err)
        return False
    return True
