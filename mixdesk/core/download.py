"""Resumable, verified downloads of Hub files.

huggingface_hub 2.4 resumes a dropped connection inside one call but not across calls: each
call writes its own temporary file, which a cancel deletes and a killed process abandons
(hub-protocol.md). MixDesk keeps its own partial file per Hub file
(``<models>/.partial/OWNER--REPO/FILE.part``) and continues it with a ``Range`` request
through the library's own resumable ``http_get``, URL helper, HTTP client and token
handling. So a download survives a cancel, a pause, an app restart or ``kill -9``, and a
dropped connection is retried with backoff. The sha256 from the Hub's LFS metadata is
checked before a file is accepted; the partial's hash is computed as bytes arrive, on a
separate thread (hashlib releases the GIL), so verification costs no extra pass.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixdesk.core.hardware import format_bytes
from mixdesk.core.hub import HubFileInfo
from mixdesk.core.library import safe_target
from mixdesk.core.remote import HubError, hub_error
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)

DISK_RESERVE = 256 << 20
CHUNK_SIZE = 1 << 20


class DownloadCancelled(MixdeskError):  # noqa: N818 - a stop the user asked for, not an error
    """The user stopped the download; the bytes so far are kept for a resume."""


class DiskFullError(MixdeskError):
    """Not enough free disk space."""


class ChecksumMismatchError(MixdeskError):
    """The downloaded bytes are not the file the Hub describes."""


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands."""

    filename: str
    done_bytes: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None
    phase: str  # "downloading", "verifying", "done"
    resumed_from: int = 0


ProgressCallback = Callable[[DownloadProgress], None]


class _Hasher:
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


class _HashingFile:
    """The partial file as http_get sees it: writes go to disk and to the hasher."""

    def __init__(self, fh: Any, hasher: _Hasher) -> None:
        self._fh = fh
        self._hasher = hasher
        self.rewound = False

    def write(self, chunk: bytes) -> int:
        n: int = self._fh.write(chunk)
        self._hasher.update(bytes(chunk))
        return n

    def tell(self) -> int:
        return int(self._fh.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        self.rewound = True  # the server ignored Range and restarts from 0: hash again at the end
        return int(self._fh.seek(offset, whence))

    def truncate(self, size: int | None = None) -> int:
        return int(self._fh.truncate(size))

    def flush(self) -> None:
        self._fh.flush()


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
        target = safe_target(self.root, f.repo_id, f.filename)
        rel = target.relative_to(self.root.resolve())
        return self.root / ".partial" / rel.with_name(rel.name + ".part")

    def target_path(self, f: HubFileInfo) -> Path:
        """Where the finished file goes."""
        return safe_target(self.root, f.repo_id, f.filename)

    def partial_bytes(self, f: HubFileInfo) -> int:
        """Bytes already downloaded (0 if none)."""
        p = self.partial_path(f)
        return p.stat().st_size if p.exists() else 0

    def discard(self, f: HubFileInfo) -> None:
        """Throw away a partial download."""
        self.partial_path(f).unlink(missing_ok=True)

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

        Args:
            f: the file, with its size and sha256 from the Hub.
            on_progress: called as bytes arrive (from this thread).
            cancel: set it to stop; the bytes so far stay for a resume.
            extra_space: disk space needed beyond the file itself (e.g. for a conversion).

        Raises:
            DownloadCancelled, DiskFullError, ChecksumMismatchError, HubError.
        """
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils._headers import build_hf_headers

        target = self.target_path(f)
        partial = self.partial_path(f)
        partial.parent.mkdir(parents=True, exist_ok=True)
        have = partial.stat().st_size if partial.exists() else 0
        if have > f.size:
            partial.unlink()
            have = 0
        self.check_disk(f.size - have + extra_space, what=f"Downloading {f.filename}")
        url = hf_hub_url(f.repo_id, f.filename, revision=f.revision)
        headers: dict[str, str] = build_hf_headers()  # HF_TOKEN or the saved login
        hasher = _Hasher()
        self._hash_existing(partial, have, hasher)
        meter = _Meter(f.filename, f.size, have, on_progress, cancel)
        attempt = 0
        rewound = False
        while True:
            size_now = partial.stat().st_size if partial.exists() else 0
            try:
                with partial.open("ab") as fh:
                    wrapped = _HashingFile(fh, hasher)
                    _http_get(
                        url,
                        wrapped,
                        resume_size=size_now,
                        headers=headers,
                        expected_size=f.size,
                        meter=meter,
                    )
                    rewound = rewound or wrapped.rewound
                break
            except DownloadCancelled:
                hasher.hexdigest()
                raise
            except OSError as err:
                hasher.hexdigest()
                if err.errno == errno.ENOSPC:
                    raise DiskFullError(
                        f"The disk filled up while downloading {f.filename}; free some space and run the "
                        "download again to continue where it stopped."
                    ) from err
                raise
            except Exception as err:  # network errors come as httpx2 or huggingface_hub exceptions
                if not _is_transient(err) or attempt >= self.retries:
                    hasher.hexdigest()
                    raise hub_error(err, f.repo_id, f.filename) from err
                attempt += 1
                wait = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "download of %s interrupted (%s); retry %d in %.1f s",
                    f.filename,
                    err,
                    attempt,
                    wait,
                )
                if _wait_or_cancel(wait, cancel):
                    hasher.hexdigest()
                    raise DownloadCancelled(
                        f"Stopped downloading {f.filename}; run it again to continue."
                    ) from None
        meter.phase("verifying")
        digest = hasher.hexdigest()
        if rewound:
            digest = _file_sha256(partial)
        if f.sha256 and digest != f.sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{f.filename} arrived damaged (its sha256 does not match the Hub's), so it was deleted; "
                "download it again."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        meter.phase("done")
        log.info("downloaded %s/%s (%d bytes, sha256 ok)", f.repo_id, f.filename, f.size)
        return target

    @staticmethod
    def _hash_existing(partial: Path, have: int, hasher: _Hasher) -> None:
        if not have:
            return
        with partial.open("rb") as fh:
            while chunk := fh.read(8 << 20):
                hasher.update(chunk)


class _Meter:
    """Turns bytes into progress events and checks for a cancel (called by http_get's tqdm)."""

    def __init__(
        self,
        filename: str,
        total: int,
        start: int,
        callback: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.filename = filename
        self.total = total
        self.done = start
        self.start = start
        self.callback = callback
        self.cancel = cancel
        self.t0 = time.monotonic()
        self.last = 0.0
        self.samples: list[tuple[float, int]] = [(self.t0, start)]

    def add(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(
                f"Stopped downloading {self.filename}; run it again to continue."
            )
        self.done += n
        now = time.monotonic()
        if self.callback is not None and (now - self.last >= 0.1 or self.done >= self.total):
            self.last = now
            self.samples = [s for s in self.samples if now - s[0] <= 5.0] + [(now, self.done)]
            t_first, b_first = self.samples[0]
            speed = (self.done - b_first) / (now - t_first) if now > t_first else 0.0
            eta = (self.total - self.done) / speed if speed > 0 else None
            self.callback(
                DownloadProgress(
                    self.filename, self.done, self.total, speed, eta, "downloading", self.start
                )
            )

    def phase(self, name: str) -> None:
        if self.callback is not None:
            elapsed = time.monotonic() - self.t0
            speed = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
            self.callback(
                DownloadProgress(self.filename, self.done, self.total, speed, 0.0, name, self.start)
            )


def _http_get(
    url: str,
    fh: _HashingFile,
    *,
    resume_size: int,
    headers: dict[str, str],
    expected_size: int,
    meter: _Meter,
) -> None:
    """huggingface_hub's resumable GET, with progress and cancel through its tqdm hook."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    # http_get reads the stream in chunks of this size and writes each whole chunk: 1 MiB
    # gives smooth progress, a quick cancel, and at most 1 MiB lost if the process is killed.
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_SIZE)

    class _Progress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            meter.add(int(n or 0))
            return None

    if resume_size >= expected_size:
        return
    http_get(
        url,
        fh,  # type: ignore[arg-type]  # a file-like object is all http_get needs
        resume_size=resume_size,
        headers=headers,
        expected_size=expected_size,
        tqdm_class=_Progress,
    )


def _is_transient(err: BaseException) -> bool:
    name = type(err).__name__
    if name in (
        "ConnectError",
        "ReadTimeout",
        "ConnectTimeout",
        "RemoteProtocolError",
        "ReadError",
        "WriteError",
        "PoolTimeout",
        "TimeoutException",
        "NetworkError",
    ):
        return True
    status = getattr(getattr(err, "response", None), "status_code", None)
    return status in (408, 429, 500, 502, 503, 504)


def _wait_or_cancel(seconds: float, cancel: threading.Event | None) -> bool:
    if cancel is None:
        time.sleep(seconds)
        return False
    return cancel.wait(seconds)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "ChecksumMismatchError",
    "DiskFullError",
    "DownloadCancelled",
    "DownloadProgress",
    "Downloader",
    "HubError",
]
