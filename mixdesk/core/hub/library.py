"""The model library: the models MixDesk has, recorded in a SQLite manifest.

Models live under the models directory (``<data dir>/models``, or ``MIXDESK_MODELS_DIR``),
one folder per Hub repository. The manifest (``library.sqlite`` in the models directory)
records for each model where it came from (repo, file, revision, sha256), its size, what it
was converted from, and when it was added. A library name (the file name without
``.gguf``) works wherever a model path does. Names are unique: a second model with the
same file name (from another repository, or imported) gets a suffix (``NAME-2``), so
every model, and every file the library owns, can be reached by name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mixdesk import paths
from mixdesk.core.engine.kv_store import KvStore, default_directory
from mixdesk.errors import InvalidArgumentError, MixdeskError

if TYPE_CHECKING:
    from mixdesk.core.workspace.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    parts TEXT NOT NULL,
    repo_id TEXT,
    filename TEXT,
    revision TEXT,
    sha256 TEXT,
    size INTEGER NOT NULL,
    converted_from TEXT,
    added_at REAL NOT NULL
)
"""


class ModelNotInLibraryError(MixdeskError):
    """No model of that name in the library."""


@dataclass(frozen=True)
class LibraryEntry:
    """One model in the library."""

    name: str
    path: str  # the file to load (the first part of a split model)
    parts: list[str] = field(default_factory=list)
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None  # of the file as the Hub serves it (before any conversion)
    size: int = 0
    converted_from: str | None = None
    added_at: float = 0.0

    @property
    def exists(self) -> bool:
        """Whether every file of the model is still on disk."""
        return all(Path(p).exists() for p in (self.parts or [self.path]))


def models_dir(settings: Settings) -> Path:
    """Where downloaded models go: ``MIXDESK_MODELS_DIR``, else the "Models folder" of
    ``settings`` (the caller's, never read from disk here), else ``<data dir>/models``."""
    override = os.environ.get("MIXDESK_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    chosen = settings.models_dir
    return Path(chosen).expanduser() if chosen else paths.data_dir() / "models"


def model_name(filename: str) -> str:
    """A library name from a file name: ``mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf`` -> without ``.gguf``
    (and without the ``-00001-of-00005`` of a split model)."""
    from mixdesk.core.gguf.profile import SPLIT_RE

    base = Path(filename).name
    if m := SPLIT_RE.match(base):
        return m.group("stem")
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


class Library:
    """The manifest of downloaded and imported models.

    Args:
        root: the models directory (the app's is :func:`models_dir` of its settings).
    """

    def __init__(self, root: Path, *, kv_states: KvStore | None = None) -> None:
        self.root = paths.ensure_dir(root)
        #: The engine's saved KV states (a deleted model's go with its files).
        self.kv_states = kv_states or KvStore(default_directory())
        self.db_path = self.root / "library.sqlite"
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    def add(self, entry: LibraryEntry) -> LibraryEntry:
        """Record a model under a name no other model has.

        A model from the same source (the same repository file, or for a local file the same
        path) is updated in place and keeps its name; otherwise a name already taken gets a
        suffix: ``NAME-2``, ``NAME-3``...

        Returns:
            The entry as recorded (with its final name).
        """
        if not entry.added_at:
            entry = replace(entry, added_at=time.time())
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # the name check and the write in one step
            if entry.repo_id is not None:
                same = db.execute(
                    "SELECT name FROM models WHERE repo_id = ? AND filename = ?",
                    (entry.repo_id, entry.filename),
                ).fetchone()
            else:
                same = db.execute(
                    "SELECT name FROM models WHERE repo_id IS NULL AND path = ?", (entry.path,)
                ).fetchone()
            if same is not None:
                entry = replace(entry, name=str(same[0]))
            else:
                taken = {str(r[0]) for r in db.execute("SELECT name FROM models").fetchall()}
                name, n = entry.name, 2
                while name in taken:
                    name, n = f"{entry.name}-{n}", n + 1
                entry = replace(entry, name=name)
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    entry.name,
                    entry.path,
                    json.dumps(entry.parts),
                    entry.repo_id,
                    entry.filename,
                    entry.revision,
                    entry.sha256,
                    entry.size,
                    entry.converted_from,
                    entry.added_at,
                ),
            )
        return entry

    def free_path(self, wanted: Path) -> Path:
        """``wanted``, or ``STEM-2.gguf``... when a file or a library model already has that path."""
        used = {Path(p) for e in self.entries() for p in e.parts or [e.path]}
        path, n = wanted, 2
        while path in used or path.exists() or path.with_name(path.name + ".converting").exists():
            path, n = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}"), n + 1
        return path

    def entries(self) -> list[LibraryEntry]:
        """All models, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM models ORDER BY added_at DESC").fetchall()
        return [self._entry(r) for r in rows]

    def get(self, name: str) -> LibraryEntry | None:
        """The model called ``name``, if any."""
        with self._db() as db:
            row = db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return self._entry(row) if row else None

    def find_download(self, repo_id: str, filename: str, sha256: str | None) -> LibraryEntry | None:
        """A model already downloaded from this repo file (with the same content), if any."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM models WHERE repo_id = ? AND filename = ?", (repo_id, filename)
            ).fetchone()
        entry = self._entry(row) if row else None
        if (
            entry is None
            or not entry.exists
            or (sha256 and entry.sha256 and entry.sha256 != sha256)
        ):
            return None
        return entry

    def remove(self, name: str, *, delete_files: bool = True) -> LibraryEntry:
        """Forget a model and (if it lives in the models directory) delete its files.

        Args:
            name: the model's library name, or the path of one of its files.
            delete_files: delete the model's files inside the models directory (a file that
                another library model also uses stays).

        Raises:
            ModelNotInLibraryError: no such model.
        """
        entry = self.get(name) or self.entry_of(Path(name))
        if entry is None:
            raise ModelNotInLibraryError(
                f"There is no model called {name} in the library; `mixdesk models` lists them."
            )
        with self._db() as db:
            db.execute("DELETE FROM models WHERE name = ?", (entry.name,))
        if delete_files:
            others = {Path(p).resolve() for e in self.entries() for p in e.parts or [e.path]}
            for part in entry.parts or [entry.path]:
                p = Path(part).resolve()
                if p.is_relative_to(self.root.resolve()) and p not in others:
                    p.unlink(missing_ok=True)
            self.kv_states.delete_model(entry.path)
        return entry

    def entry_of(self, path: Path) -> LibraryEntry | None:
        """The library model one of whose files is ``path``, if any."""
        wanted = path.expanduser().resolve()
        for e in self.entries():
            if any(Path(p).resolve() == wanted for p in e.parts or [e.path]):
                return e
        return None

    def lookup(self, name: str) -> LibraryEntry | None:
        """The model called ``name`` (or a file name of it: ``NAME.gguf``), if any.

        Raises:
            ModelNotInLibraryError: the model is in the library but a file of it is gone.
        """
        entry = self.get(name) or self.get(model_name(name))
        if entry is not None and not entry.exists:
            raise ModelNotInLibraryError(
                f"{entry.name} is in the library but its file {entry.path} is gone; "
                f"`mixdesk rm {entry.name}` forgets it."
            )
        return entry

    @staticmethod
    def _entry(row: tuple[object, ...]) -> LibraryEntry:
        name, path, parts, repo_id, filename, revision, sha256, size, converted_from, added_at = row
        return LibraryEntry(
            name=str(name),
            path=str(path),
            parts=list(json.loads(str(parts))),
            repo_id=repo_id if isinstance(repo_id, str) else None,
            filename=filename if isinstance(filename, str) else None,
            revision=revision if isinstance(revision, str) else None,
            sha256=sha256 if isinstance(sha256, str) else None,
            size=int(size) if isinstance(size, int) else 0,
            converted_from=converted_from if isinstance(converted_from, str) else None,
            added_at=float(added_at) if isinstance(added_at, (int, float)) else 0.0,
        )


def safe_target(root: Path, repo_id: str, filename: str) -> Path:
    """Where a Hub file goes under ``root``: ``root/OWNER--REPO/FILENAME``, never outside ``root``.

    Raises:
        InvalidArgumentError: a repo id or file name that would escape the models directory.
    """
    bad = (
        ".." in Path(filename).parts
        or filename.startswith(("/", "\\"))
        or "\\" in filename
        or ":" in filename
        or "\0" in filename
    )
    if bad or "/" not in repo_id or ".." in repo_id.split("/") or repo_id.count("/") != 1:
        raise InvalidArgumentError(
            f"Refusing the Hub file name {repo_id}/{filename}: it would land outside the models folder."
        )
    target = (root / repo_id.replace("/", "--") / filename).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InvalidArgumentError(
            f"Refusing the Hub file name {repo_id}/{filename}: it would land outside the models folder."
        )
    return target
