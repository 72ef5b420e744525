"""Where a download's bytes go as they arrive: the hasher, the partial stores, the sink.

http_get writes into a :class:`Sink`; it hands every byte to a :class:`Hasher` (sha256 on
its own thread) and to a store: :class:`PlainStore` (``FILE.part``, the bytes as they
come) or, for a TheBloke legacy Mixtral file, a
:class:`~mixdesk.core.gguf.merge_stream.MergingStore` (the merged file, written in place).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from mixdesk import paths
from mixdesk.core.hub.remote_header import HubSizeMismatchError


class Hasher:
    """sha256 of a byte stream, computed on its own thread."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()


class Store(Protocol):
    """Where the bytes of a download in progress are kept."""

    def consumed(self) -> int: ...
    def write(self, chunk: bytes | bytearray | memoryview) -> None: ...
    def source_chunks(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    def finish(self, target: Path, *, before_move: Callable[[Path], None]) -> None: ...
    def discard(self) -> None: ...


class PlainStore:
    """The file's bytes as they arrive, in ``FILE.part``."""

    def __init__(self, path: Path) -> None:
        paths.ensure_dir(path.parent)
        self.path = path
        self._fh = paths.open_private(path, "ab")

    def consumed(self) -> int:
        return int(self._fh.tell())

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._fh.write(chunk)

    def source_chunks(self) -> Iterator[bytes]:
        self._fh.flush()
        with self.path.open("rb") as fh:
            while chunk := fh.read(8 << 20):
                yield chunk

    def close(self) -> None:
        self._fh.close()

    def finish(self, target: Path, *, before_move: Callable[[Path], None]) -> None:
        self._fh.close()
        before_move(self.path)
        paths.ensure_dir(target.parent)
        os.replace(self.path, target)

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


class Sink:
    """What http_get writes into: the stream goes to the hasher and to the store.

    A download that may merge experts keeps the first bytes in memory until the header is
    complete, then ``choose`` picks the store (merging for a legacy Mixtral file, else plain).
    Nothing past ``size`` (the size the Hub announced, which the disk check counted) is taken:
    huggingface_hub compares sizes only once the whole body is on disk.
    """

    def __init__(
        self,
        hasher: Hasher,
        store: Store | None,
        choose: Callable[[bytes, bool], Store | None],
        *,
        size: int,
        name: str,
    ) -> None:
        self._hasher = hasher
        self._choose = choose
        self.size = size
        self.name = name
        self.store = store
        self._buffer = bytearray()
        self._next_try = 0
        self._pos = store.consumed() if store is not None else 0
        self.rewound = False
        if store is None:
            self._decide(final=False)

    def write(self, chunk: bytes) -> int:
        if self._pos + len(chunk) > self.size:
            raise HubSizeMismatchError(
                f"The Hub sent more than the {self.size:,} bytes it announced for {self.name}, "
                "so MixDesk stopped the download there (nothing past that size was written). "
                "Try again later; if it happens again, the file on the Hub is not what the Hub "
                "says it is."
            )
        self._hasher.update(bytes(chunk))
        self._pos += len(chunk)
        if self.store is not None:
            self.store.write(chunk)
        else:
            self._buffer += chunk
            if len(self._buffer) >= self._next_try:
                self._decide(final=False)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        # http_get rewinds to where its request began when the server ignored Range, and
        # requests always begin at tell(): the whole file comes again, hashed at the end.
        self.rewound = True
        if self.store is not None:
            self.store.discard()
            self.store = None
        self._buffer.clear()
        self._pos = 0
        self._next_try = 0
        self._decide(final=False)
        return 0

    def truncate(self, size: int | None = None) -> int:
        return 0  # seek() already started over

    def flush(self) -> None:
        pass

    def settle(self) -> Store:
        """The store once the stream has ended (choosing one now if the header never completed)."""
        if self.store is None:
            self._decide(final=True)
        assert self.store is not None
        return self.store

    def _decide(self, *, final: bool) -> None:
        store = self._choose(bytes(self._buffer), final)
        if store is None:
            self._next_try = max(64 << 10, 2 * len(self._buffer))  # geometric: linear work
            return
        if self._buffer:
            store.write(self._buffer)
            self._buffer.clear()
        self.store = store
