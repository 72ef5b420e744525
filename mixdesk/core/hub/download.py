"""Resumable, verified downloads of Hub files.

huggingface_hub 2.4 resumes a dropped connection inside one call but not across calls: each
call writes its own temporary file, which a cancel deletes and a killed process abandons
(hub-protocol.md). MixDesk keeps its own partial file per Hub file
(``<models>/.partial/OWNER--REPO/FILE.part``) and continues it with a ``Range`` request
through the library's own resumable ``http_get``, URL helper, HTTP client and token
handling (:mod:`mixdesk.core.hub.download_http`). So a download survives a cancel, a pause,
an app restart or ``kill -9``, and a dropped connection is retried with backoff. The sha256
from the Hub's LFS metadata is checked before a file is accepted; the partial's hash is
computed as bytes arrive, on a separate thread (hashlib releases the GIL), so verification
costs no extra pass.

One download per file at a time, across processes: a lock file next to the ``.part``
(:mod:`mixdesk.core.hub.file_lock`). A TheBloke legacy Mixtral file is written in the merged
expert layout while it downloads (:mod:`mixdesk.core.gguf.merge_stream`), so it needs its own
size on disk, not twice that. A verified file is recorded (``FILE.done`` beside the
partial) before it is moved into place, so a crash between the move and the library row
never costs a second download.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mixdesk import paths
from mixdesk.core.gguf import merge_stream
from mixdesk.core.gguf.convert import ConversionError, merged_layout, needs_conversion
from mixdesk.core.gguf.header import MAX_HEADER_BYTES
from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.core.gguf.merge_stream import MergingStore, parse_header_prefix
from mixdesk.core.hub.api import HubFileInfo
from mixdesk.core.hub.download_http import ProgressCallback, ProgressMeter, fetch
from mixdesk.core.hub.download_store import Hasher, PlainStore, Sink, Store
from mixdesk.core.hub.file_lock import FileLock
from mixdesk.core.hub.library import safe_target
from mixdesk.core.machine.hardware import format_bytes
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)

DISK_RESERVE = 256 << 20


class DiskFullError(MixdeskError):
    """Not enough free disk space."""


class ChecksumMismatchError(MixdeskError):
    """The downloaded bytes are not the file the Hub describes."""


class DownloadInProgressError(MixdeskError):
    """Another download (another window, command or process) is writing the same file."""


@dataclass(frozen=True)
class DownloadedFile:
    """A verified download in its place."""

    path: Path
    sha256: str | None  # of the bytes the Hub served
    converted: bool  # written in the merged expert layout while downloading


class Downloader:
    """Downloads Hub files into the models directory.

    Args:
        root: the models directory.
        retries: attempts after the library's own retries give up (server down, connection reset).
        backoff_s: the first wait between attempts; it doubles each time.
    """

    def __init__(self, root: Path, *, retries: int = 5, backoff_s: float = 1.0) -> None:
        self.root = root
        self.retries = retries
        self.backoff_s = backoff_s

    def partial_path(self, f: HubFileInfo) -> Path:
        """Where the bytes downloaded so far are kept."""
        return self._base(f).with_name(self._base(f).name + ".part")

    def target_path(self, f: HubFileInfo) -> Path:
        """Where the finished file goes."""
        return safe_target(self.root, f.repo_id, f.filename)

    def lock_path(self, f: HubFileInfo, *, what: str = "part") -> Path:
        """The lock file of a download (``what``: "part" for one file, "pull" for a whole model)."""
        return self._base(f).with_name(f"{self._base(f).name}.{what}.lock")

    def partial_bytes(self, f: HubFileInfo) -> int:
        """Bytes already downloaded (0 if none)."""
        state = merge_stream.read_state(self._base(f))
        consumed = state.get("consumed") if state is not None else None
        if isinstance(consumed, int):
            return consumed
        p = self.partial_path(f)
        return p.stat().st_size if p.exists() else 0

    def discard(self, f: HubFileInfo) -> None:
        """Throw away a partial download."""
        self.partial_path(f).unlink(missing_ok=True)
        merge_stream.discard(self._base(f))

    def forget(self, f: HubFileInfo) -> None:
        """Drop the record that ``f`` was verified (once the library has it)."""
        done = self._done_path(f)
        done.unlink(missing_ok=True)
        done.with_name(done.name + ".tmp").unlink(missing_ok=True)

    def check_disk(self, need_bytes: int, *, what: str) -> None:
        """Raise DiskFullError unless ``need_bytes`` (plus a reserve) fit on the models disk."""
        paths_root = self.root if self.root.exists() else self.root.parent
        free = shutil.disk_usage(paths_root).free
        if free < need_bytes + DISK_RESERVE:
            raise DiskFullError(
                f"{what} needs {format_bytes(need_bytes)} of free disk space (and {format_bytes(DISK_RESERVE)} "
                f"to spare) in {self.root} but only {format_bytes(free)} is free; free some space or choose "
                "another models folder."
            )

    def download(
        self,
        f: HubFileInfo,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        extra_space: int = 0,
    ) -> Path:
        """Download ``f`` (resuming what is on disk), verify it and move it into place.

        The same as :meth:`download_file` without merging, returning the path.
        """
        return self.download_file(
            f, on_progress=on_progress, cancel=cancel, extra_space=extra_space
        ).path

    def download_file(
        self,
        f: HubFileInfo,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        extra_space: int = 0,
        merge_experts: bool = False,
    ) -> DownloadedFile:
        """Download ``f`` (resuming what is on disk), verify it and move it into place.

        Args:
            f: the file, with its size and sha256 from the Hub.
            on_progress: called as bytes arrive (from this thread).
            cancel: set it to stop; the bytes so far stay for a resume.
            extra_space: disk space needed beyond the file itself (e.g. for a conversion).
            merge_experts: write a legacy Mixtral file in the merged expert layout as it arrives.

        Raises:
            DownloadInProgressError, DownloadCancelled, DiskFullError, ChecksumMismatchError,
            HubError, ConversionError.
        """
        lock = FileLock(self.lock_path(f))
        if not lock.acquire():
            raise DownloadInProgressError(
                f"{f.filename} is already downloading (in another MixDesk window or command); "
                "wait for that download to finish."
            )
        with lock:
            done = self.verified(f)
            if done is not None:
                self.discard(f)  # what a crash after the move left behind
                return done
            return self._download(f, on_progress, cancel, extra_space, merge_experts)

    def verified(self, f: HubFileInfo) -> DownloadedFile | None:
        """``f`` in its place and verified by an earlier run (which stopped before the library row).

        A file in place without that record (moved there by an older MixDesk) is hashed again:
        reading it costs less than downloading it.
        """
        target = self.target_path(f)
        record = _read_json(self._done_path(f))
        try:
            st = target.stat()
        except OSError:
            st = None
        if record is not None:
            if (
                st is not None
                and record.get("sha256") == f.sha256
                and record.get("size") == st.st_size
                and record.get("mtime_ns") == st.st_mtime_ns
            ):
                return DownloadedFile(target, f.sha256, bool(record.get("converted")))
            self.forget(f)
        if (
            st is not None
            and st.st_size == f.size
            and f.sha256
            and _sha256_of(_chunks(target)) == f.sha256
        ):
            self.mark_done(f, target, converted=False)
            return DownloadedFile(target, f.sha256, False)
        return None

    def mark_done(self, f: HubFileInfo, path: Path, *, converted: bool) -> None:
        """Record that ``path`` (about to be, or already, at ``f``'s target) holds ``f``, verified."""
        st = path.stat()
        record = {
            "sha256": f.sha256,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "converted": converted,
        }
        done = self._done_path(f)
        paths.ensure_dir(done.parent)
        tmp = done.with_name(done.name + ".tmp")
        with paths.open_private(tmp, "wb") as fh:
            fh.write(json.dumps(record).encode())
        os.replace(tmp, done)

    def _download(
        self,
        f: HubFileInfo,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        extra_space: int,
        merge_experts: bool,
    ) -> DownloadedFile:
        from huggingface_hub import hf_hub_url

        from mixdesk.core.hub.adapter import build_headers as build_hf_headers

        target = self.target_path(f)
        store = self._open_store(f)
        have = store.consumed() if store is not None else 0
        try:
            self.check_disk(f.size - have + extra_space, what=f"Downloading {f.filename}")
        except DiskFullError:
            if store is not None:
                store.close()
            raise
        url = hf_hub_url(f.repo_id, f.filename, revision=f.revision)
        headers: dict[str, str] = build_hf_headers()  # HF_TOKEN or the saved login
        hasher = Hasher()
        if store is not None:
            for chunk in store.source_chunks():
                hasher.update(chunk)
        sink = Sink(
            hasher,
            store,
            self._chooser(f, merge_experts=merge_experts),
            size=f.size,
            name=f.filename,
        )
        meter = ProgressMeter(f.filename, f.size, start=have, callback=on_progress, cancel=cancel)
        try:
            with _disk_full_as_error(f.filename):
                fetch(
                    f,
                    sink,
                    url=url,
                    headers=headers,
                    meter=meter,
                    cancel=cancel,
                    retries=self.retries,
                    backoff_s=self.backoff_s,
                )
            store = sink.settle()
        except BaseException:
            hasher.hexdigest()
            if sink.store is not None:
                sink.store.close()  # keeps the bytes (and a merging download's state) for a resume
            raise
        meter.phase("verifying")
        digest = hasher.hexdigest()
        if sink.rewound:
            digest = _sha256_of(store.source_chunks())
        if f.sha256 and digest != f.sha256:
            store.discard()
            raise ChecksumMismatchError(
                f"{f.filename} arrived damaged (its sha256 does not match the Hub's), so it was deleted; "
                "download it again."
            )
        converted = isinstance(store, MergingStore)
        store.finish(target, before_move=lambda p: self.mark_done(f, p, converted=converted))
        meter.phase("done")
        log.info(
            "downloaded %s/%s (%d bytes, sha256 ok%s)",
            f.repo_id,
            f.filename,
            f.size,
            ", merged expert layout" if converted else "",
        )
        return DownloadedFile(target, f.sha256, converted)

    def _open_store(self, f: HubFileInfo) -> Store | None:
        """What an earlier run left for ``f``: a merging download, a ``.part``, or nothing."""
        part = self.partial_path(f)
        merging = MergingStore.resume(self._base(f), source_size=f.size, sha256=f.sha256)
        if merging is not None:
            part.unlink(missing_ok=True)  # a stale plain partial: the merging download is newer
            return merging
        if part.exists():
            if 0 < part.stat().st_size <= f.size:
                return PlainStore(part)
            part.unlink()
        return None

    def _chooser(
        self, f: HubFileInfo, *, merge_experts: bool
    ) -> Callable[[bytes, bool], Store | None]:
        """Picks the store for a fresh download from its first bytes (None: not enough yet)."""

        def choose(data: bytes, final: bool) -> Store | None:
            if not merge_experts:
                return PlainStore(self.partial_path(f))
            try:
                header = parse_header_prefix(data, name=f.filename, file_size=f.size)
                if header is None:
                    if final or len(data) > MAX_HEADER_BYTES:
                        return PlainStore(self.partial_path(f))
                    return None
                if not needs_conversion(header):
                    return PlainStore(self.partial_path(f))
                layout = merged_layout(header, data[header.kv_start : header.kv_end])
            except (GGUFHeaderError, ConversionError) as err:
                # not a model we can merge: downloaded as it is, and the usual checks speak later
                log.info("%s is downloaded as it is: %s", f.filename, err)
                return PlainStore(self.partial_path(f))
            return MergingStore.start(self._base(f), layout, source_size=f.size, sha256=f.sha256)

        return choose

    def _base(self, f: HubFileInfo) -> Path:
        target = safe_target(self.root, f.repo_id, f.filename)
        rel = target.relative_to(self.root.resolve())
        return self.root / ".partial" / rel

    def _done_path(self, f: HubFileInfo) -> Path:
        return self._base(f).with_name(self._base(f).name + ".done")


@contextlib.contextmanager
def _disk_full_as_error(filename: str) -> Iterator[None]:
    """A disk that fills up while the bytes arrive (ENOSPC) raises DiskFullError."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(
                f"The disk filled up while downloading {filename}; free some space and run the "
                "download again to continue where it stopped."
            ) from err
        raise


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            yield chunk


def _sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = [
    "ChecksumMismatchError",
    "DiskFullError",
    "DownloadInProgressError",
    "DownloadedFile",
    "Downloader",
]
