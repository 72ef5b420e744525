"""Write a legacy Mixtral file's byte stream straight into the merged layout, as it downloads.

Once a legacy file's header has arrived, :func:`~mixdesk.core.gguf.convert.merged_layout` says
where each of its tensor bytes goes in the merged file, so a download never needs the
legacy file on disk as well as the converted one (26 GB more for Q4_K_M). What the stream
holds besides tensor bytes (the header, padding) is kept on the side, so the original
stream can be read back in order: its sha256 is checked against the Hub's, and a resumed
download hashes the bytes it already has without fetching them again.

Files, next to the download's ``.part`` (``BASE`` is ``.partial/OWNER--REPO/FILE``):

- ``BASE.converting``: the merged file, at its final size from the start (holes are zeros);
- ``BASE.converting.rest``: the source bytes that have no place in it, in stream order;
- ``BASE.converting.json``: how far the stream has been written (``consumed`` source bytes,
  of which ``rest`` went to the side file), and which Hub file it is.

The state is written after the bytes it counts (at least every second), so after a crash
the files hold at least what the state says: a resume truncates the side file to ``rest``,
rewrites any tensor bytes past ``consumed`` (same bytes, same place) and goes on.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from mixdesk import paths
from mixdesk.core.gguf.convert import ConversionError, MergedLayout, check_merged, merged_layout
from mixdesk.core.gguf.header import MAX_HEADER_BYTES, GGUFHeader, read_header
from mixdesk.core.gguf.header_values import GGUFHeaderError

log = logging.getLogger(__name__)

_CHECKPOINT_BYTES = 64 << 20
_CHECKPOINT_S = 1.0
_READ = 8 << 20


class _NeedMoreError(Exception):
    """The header goes on past the bytes we have."""


class _Prefix:
    """The first bytes of a file, as a stream that says so when a reader wants more."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._data):
            raise _NeedMoreError
        end = len(self._data) if n < 0 else self._pos + n
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def parse_header_prefix(data: bytes, *, name: str, file_size: int) -> GGUFHeader | None:
    """The header of a GGUF file from its first bytes, or None when they end inside the header.

    Raises:
        GGUFHeaderError: the bytes are not a GGUF header (or a damaged one).
    """
    try:
        return read_header(cast(BinaryIO, _Prefix(data)), name=name, file_size=file_size)
    except _NeedMoreError:
        return None


def store_paths(base: Path) -> tuple[Path, Path, Path]:
    """The merged file, the side file and the state file of a merging download."""
    merged = base.with_name(base.name + ".converting")
    return merged, merged.with_name(merged.name + ".rest"), merged.with_name(merged.name + ".json")


class MergingStore:
    """The merged file of a legacy download being written as the source stream arrives.

    Use :meth:`start` when the header has arrived, :meth:`resume` for one on disk.
    """

    def __init__(self, base: Path, layout: MergedLayout, *, consumed: int, rest: int) -> None:
        self.base = base
        self.layout = layout
        self.merged_path, self.rest_path, self.state_path = store_paths(base)
        self._state: dict[str, object] = {}
        self._consumed = consumed
        self._rest_size = rest
        self._starts = [s.source_start for s in layout.segments]
        self._index = self._segment_at(consumed)
        self._merged: BinaryIO = paths.open_private(self.merged_path, "r+b")
        self._rest: BinaryIO = paths.open_private(self.rest_path, "r+b")
        self._rest.truncate(rest)
        self._rest.seek(rest)
        self._saved = (consumed, time.monotonic())

    @classmethod
    def start(
        cls, base: Path, layout: MergedLayout, *, source_size: int, sha256: str | None
    ) -> MergingStore:
        """Begin a merged file for a download whose header has just arrived."""
        merged, rest, state = store_paths(base)
        state.unlink(missing_ok=True)
        with paths.open_private(merged, "wb") as fh:
            fh.write(layout.header)
            fh.truncate(layout.size)
        paths.open_private(rest, "wb").close()
        store = cls(base, layout, consumed=0, rest=0)
        store._state = {"size": source_size, "sha256": sha256}
        store.checkpoint()
        log.info("converting %s to the merged expert layout while it downloads", base.name)
        return store

    @classmethod
    def resume(cls, base: Path, *, source_size: int, sha256: str | None) -> MergingStore | None:
        """The merging download on disk for this Hub file, or None (what is there is removed)."""
        state = read_state(base)
        if state is None:
            discard(base)  # a start that crashed before its first state, or nothing at all
            return None
        merged, rest, _ = store_paths(base)
        consumed, rest_size = state.get("consumed"), state.get("rest")
        layout = None
        if (
            state.get("size") == source_size
            and state.get("sha256") == sha256
            and isinstance(consumed, int)
            and isinstance(rest_size, int)
            and 0 < rest_size <= consumed <= source_size
            and merged.exists()
            and rest.exists()
            and rest.stat().st_size >= rest_size
        ):
            layout = _layout_from_rest(rest, rest_size, base.name, source_size)
        if (
            layout is None
            or merged.stat().st_size != layout.size
            or not isinstance(consumed, int)
            or not isinstance(rest_size, int)
        ):
            log.info("discarding the merging download of %s (it does not match the Hub file)", base)
            discard(base)
            return None
        store = cls(base, layout, consumed=consumed, rest=rest_size)
        store._state = {"size": source_size, "sha256": sha256}
        return store

    def consumed(self) -> int:
        """Source bytes written so far."""
        return self._consumed

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write the next source bytes: tensor bytes to their place, the rest to the side file."""
        data = memoryview(chunk)
        pos, end = self._consumed, self._consumed + len(data)
        segments = self.layout.segments
        i = self._index
        while pos < end:
            if i < len(segments) and segments[i].source_start <= pos:
                seg = segments[i]
                take = min(end, seg.source_end) - pos
                self._merged.seek(seg.output_start + pos - seg.source_start)
                self._merged.write(data[pos - self._consumed : pos - self._consumed + take])
                pos += take
                if pos >= seg.source_end:
                    i += 1
            else:
                stop = min(end, segments[i].source_start) if i < len(segments) else end
                self._rest.write(data[pos - self._consumed : stop - self._consumed])
                self._rest_size += stop - pos
                pos = stop
        self._index = i
        self._consumed = end
        now = time.monotonic()
        if end - self._saved[0] >= _CHECKPOINT_BYTES or now - self._saved[1] >= _CHECKPOINT_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Record how far the stream has been written (after the bytes themselves)."""
        self._merged.flush()
        self._rest.flush()
        state = {**self._state, "consumed": self._consumed, "rest": self._rest_size}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with paths.open_private(tmp, "wb") as fh:
            fh.write(json.dumps(state).encode())
        os.replace(tmp, self.state_path)
        self._saved = (self._consumed, time.monotonic())

    def source_chunks(self) -> Iterator[bytes]:
        """The source bytes written so far, in stream order (read back from both files)."""
        self._merged.flush()
        self._rest.flush()
        with self.merged_path.open("rb") as merged, self.rest_path.open("rb") as rest:
            pos = 0
            for seg in self.layout.segments:
                if seg.source_start >= self._consumed:
                    break
                yield from _read(rest, None, seg.source_start - pos)
                stop = min(seg.source_end, self._consumed)
                yield from _read(merged, seg.output_start, stop - seg.source_start)
                pos = stop
            yield from _read(rest, None, self._consumed - pos)

    def close(self) -> None:
        """Save the state and close the files (the download can resume later)."""
        if self._merged.closed:
            return
        self.checkpoint()
        self._merged.close()
        self._rest.close()

    def finish(self, target: Path, *, before_move: Callable[[Path], None]) -> None:
        """Check the merged file and move it to ``target`` (calling ``before_move`` with its path first).

        Raises:
            ConversionError: the merged file failed its check (the download is discarded).
        """
        self.close()
        try:
            check_merged(self.merged_path, self.layout)
        except ConversionError:
            discard(self.base)
            raise
        before_move(self.merged_path)
        paths.ensure_dir(target.parent)
        os.replace(self.merged_path, target)
        discard(self.base)

    def discard(self) -> None:
        """Throw the merging download away."""
        if not self._merged.closed:
            self._merged.close()
            self._rest.close()
        discard(self.base)

    def _segment_at(self, pos: int) -> int:
        """The index of the first segment that ends after ``pos``."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i < 0 or self.layout.segments[i].source_end <= pos:
            i += 1
        return i


def read_state(base: Path) -> dict[str, object] | None:
    """The state of a merging download, or None."""
    try:
        state = json.loads(store_paths(base)[2].read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def discard(base: Path) -> None:
    """Remove a merging download's files."""
    for p in store_paths(base):
        p.unlink(missing_ok=True)
    store_paths(base)[2].with_suffix(".json.tmp").unlink(missing_ok=True)


def _layout_from_rest(rest: Path, size: int, name: str, source_size: int) -> MergedLayout | None:
    """The layout again, from the source header at the start of the side file."""
    want = min(size, 1 << 20)
    while True:
        with rest.open("rb") as fh:
            data = fh.read(want)
        try:
            header = parse_header_prefix(data, name=name, file_size=source_size)
            if header is not None:
                return merged_layout(header, data[header.kv_start : header.kv_end])
        except (GGUFHeaderError, ConversionError):  # an unreadable side file: start over
            return None
        if want >= min(size, MAX_HEADER_BYTES):
            return None
        want = min(size, MAX_HEADER_BYTES, want * 4)


def _read(fh: BinaryIO, offset: int | None, length: int) -> Iterator[bytes]:
    if offset is not None:
        fh.seek(offset)
    while length > 0:
        chunk = fh.read(min(_READ, length))
        if not chunk:
            raise ConversionError(
                "A partial download of a legacy file is damaged; it was discarded: run it again."
            )
        length -= len(chunk)
        yield chunk
