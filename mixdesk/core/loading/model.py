"""The model a user names, resolved and checked once: :class:`ResolvedModel`.

A model reference is a path, a library name, or any part of a split model. Every front end
(``mixdesk chat``, ``plan``, ``serve``, the window, Measure) turns it into a
:class:`ResolvedModel` with :func:`resolve_model` (or :func:`resolve_file` for a path alone),
and from there on nothing parses the reference or checks the file again: the load service
plans from it, and the engine loads the :class:`~mixdesk.core.engine.protocol.LoadConfig`
made from it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.gguf.header import MAGIC, open_model_file
from mixdesk.core.gguf.profile import split_parts
from mixdesk.core.hub.library import Library, model_name
from mixdesk.errors import ModelNotFoundError, NotAGgufError


@dataclass(frozen=True)
class ResolvedModel:
    """A local GGUF model whose every part exists, is a regular file and starts with the
    GGUF signature.

    Attributes:
        path: the file llama.cpp loads (the first part of a split model).
        parts: every file of the model, in order (``(path,)`` for a single file).
        library_name: the model's name in the library, when it is a library model.
        size: the bytes of all parts together.
    """

    path: Path
    parts: tuple[Path, ...]
    library_name: str | None
    size: int

    @property
    def name(self) -> str:
        """What to call the model: its library name, else its file name without ``.gguf``
        (and without the ``-00001-of-00003`` of a split model)."""
        return self.library_name or model_name(self.path.name)

    def __str__(self) -> str:
        return str(self.path)


def resolve_file(path: str | os.PathLike[str], *, library_name: str | None = None) -> ResolvedModel:
    """Check a local model file (any part of a split model) and describe it.

    Args:
        path: the file, or any part of a split model.
        library_name: the model's library name, when it came from the library.

    Raises:
        ModelNotFoundError: no such file.
        NotAGgufError: a part is not a GGUF model (NotARegularFileError: a FIFO, a device
            or a folder, refused before anything reads it).
        GGUFHeaderError: a part of a split model is missing.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise ModelNotFoundError(str(given))
    parts = tuple(split_parts(given))
    size = 0
    for part in parts:
        with open_model_file(part) as fh:  # a FIFO or a device is refused here, never read
            if fh.read(len(MAGIC)) != MAGIC:
                raise NotAGgufError(str(part))
            size += os.fstat(fh.fileno()).st_size
    return ResolvedModel(path=parts[0], parts=parts, library_name=library_name, size=size)


def resolve_model(ref: str | os.PathLike[str], *, library: Library) -> ResolvedModel:
    """The model for a path, a library name or any part of a split model, checked once.

    A path that is one of a library model's files carries that model's library name too.

    Args:
        ref: what the user named.
        library: where library names are looked up.

    Raises:
        ModelNotFoundError: neither a file nor a library name.
        ModelNotInLibraryError: a library name whose files are gone.
        NotAGgufError, GGUFHeaderError: see :func:`resolve_file`.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        entry = library.entry_of(path)
    else:
        entry = library.lookup(text)
        if entry is None:
            raise ModelNotFoundError(text)
        path = Path(entry.path)
    return resolve_file(path, library_name=entry.name if entry is not None else None)
