"""The network half of a download: the ranged GET, its progress, a cancel, retries.

:func:`fetch` continues a file from the bytes its :class:`~mixdesk.core.hub.download_store.Sink`
already holds with a ``Range`` request through huggingface_hub's resumable ``http_get``, and
retries a dropped connection with backoff. A :class:`ProgressMeter` turns the bytes that
arrive into :class:`DownloadProgress` events and stops the transfer when the user cancels.
Where the bytes go and how a file is verified and recorded is
:mod:`mixdesk.core.hub.download`'s business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mixdesk.core.hub.api import HubFileInfo
from mixdesk.core.hub.download_store import Sink
from mixdesk.core.hub.remote_header import HubError, hub_error
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


class DownloadCancelled(MixdeskError):  # noqa: N818 - a stop the user asked for, not an error
    """The user stopped the download; the bytes so far are kept for a resume."""


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands."""

    filename: str
    done_bytes: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None
    phase: str  # "waiting" (for another download of it), "downloading", "verifying", "done"
    resumed_from: int = 0


ProgressCallback = Callable[[DownloadProgress], None]


class ProgressMeter:
    """Turns bytes into progress events and checks for a cancel (called by http_get's tqdm).

    Args:
        filename: the file's name, for the events and the cancel's sentence.
        total: the file's size.
        start: the bytes already on disk when this run began.
        callback: receives the events (None: nobody listens).
        cancel: set it to stop the transfer at the next chunk.
    """

    def __init__(
        self,
        filename: str,
        total: int,
        *,
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


def fetch(
    f: HubFileInfo,
    sink: Sink,
    *,
    url: str,
    headers: dict[str, str],
    meter: ProgressMeter,
    cancel: threading.Event | None,
    retries: int,
    backoff_s: float,
) -> None:
    """Write the rest of ``f`` (from ``sink.tell()``) into ``sink``, retrying dropped connections.

    Args:
        f: the file, with its size.
        sink: where the bytes go; it already holds the bytes of earlier runs.
        url: the file's download URL.
        headers: the request's headers (the token among them).
        meter: counts the bytes and raises DownloadCancelled once ``cancel`` is set.
        cancel: also ends the wait between attempts.
        retries: attempts after the library's own retries give up.
        backoff_s: the first wait between attempts; it doubles each time.

    Raises:
        DownloadCancelled, HubError, OSError (a disk error, never retried).
    """
    attempt = 0
    while True:
        try:
            _http_get(url, sink, headers=headers, expected_size=f.size, meter=meter)
            return
        except (DownloadCancelled, HubError, OSError):
            raise
        except Exception as err:  # network errors come as httpx or huggingface_hub exceptions
            if not _is_transient(err) or attempt >= retries:
                raise hub_error(err, f.repo_id, f.filename) from err
            attempt += 1
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "download of %s interrupted (%s); retry %d in %.1f s",
                f.filename,
                err,
                attempt,
                wait,
            )
            if _wait_or_cancel(wait, cancel):
                raise DownloadCancelled(
                    f"Stopped downloading {f.filename}; run it again to continue."
                ) from None


def _http_get(
    url: str,
    sink: Sink,
    *,
    headers: dict[str, str],
    expected_size: int,
    meter: ProgressMeter,
) -> None:
    """huggingface_hub's resumable GET, with progress and cancel through its tqdm hook."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    from mixdesk.core.hub.adapter import stream_get

    class _Progress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            meter.add(int(n or 0))
            return None

    resume_size = sink.tell()
    if resume_size >= expected_size:
        return
    # Chunks of CHUNK_SIZE (1 MiB): smooth progress, a quick cancel, and at most 1 MiB lost
    # if the process is killed.
    stream_get(
        url,
        sink,  # type: ignore[arg-type]  # a file-like object is all http_get needs
        resume_size=resume_size,
        headers=headers,
        expected_size=expected_size,
        tqdm_class=_Progress,
        chunk_size=CHUNK_SIZE,
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


__all__ = ["DownloadCancelled", "DownloadProgress", "ProgressCallback", "ProgressMeter", "fetch"]
