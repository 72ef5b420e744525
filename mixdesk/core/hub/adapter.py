"""Every use of huggingface_hub beyond its public API, in one place.

The downloader streams files with huggingface_hub's own resumable GET (``http_get``, with its
retries and proxy/SSL handling) into MixDesk's own partial files, and builds the Hub's
request headers itself; neither is exported at the package's top level. They are tied to the
version range pinned in pyproject.toml: :func:`check_compatible` (run by the test suite)
fails loudly, naming what changed, when the installed huggingface_hub differs.
"""

from __future__ import annotations

import inspect
from typing import IO, Any

#: The huggingface_hub major version these internals were checked against (pyproject pins <2).
CHECKED_MAJOR = 1


class HubAdapterError(RuntimeError):
    """The installed huggingface_hub is not the one this adapter was written for."""


def build_headers(*, token: str | bool | None = None) -> dict[str, str]:
    """The headers huggingface_hub sends to the Hub (user agent, token where allowed).

    ``build_hf_headers`` is re-exported lazily by ``huggingface_hub.utils``, which mypy cannot
    see; its defining module is imported instead.
    """
    from huggingface_hub.utils._headers import build_hf_headers

    return dict(build_hf_headers(token=token))


def stream_get(
    url: str,
    sink: IO[bytes],
    *,
    resume_size: int,
    headers: dict[str, str],
    expected_size: int,
    tqdm_class: type[Any],
    chunk_size: int,
) -> None:
    """huggingface_hub's resumable GET of ``url`` into ``sink``, reading ``chunk_size`` at most
    at a time and reporting through ``tqdm_class`` (whose ``update`` sees every chunk)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, chunk_size)
    http_get(
        url,
        sink,  # type: ignore[arg-type]  # a file-like object is all http_get needs
        resume_size=resume_size,
        headers=headers,
        expected_size=expected_size,
        tqdm_class=tqdm_class,
    )


def check_compatible() -> None:
    """Fail loudly when huggingface_hub lacks what this adapter uses.

    Raises:
        HubAdapterError: naming the version or the missing piece.
    """
    import huggingface_hub
    from huggingface_hub import constants, file_download

    version = huggingface_hub.__version__
    if int(version.split(".")[0]) != CHECKED_MAJOR:
        raise HubAdapterError(
            f"huggingface_hub {version} is installed; MixDesk's hub adapter was checked "
            f"against {CHECKED_MAJOR}.x"
        )
    if not hasattr(constants, "DOWNLOAD_CHUNK_SIZE"):
        raise HubAdapterError("huggingface_hub.constants has no DOWNLOAD_CHUNK_SIZE any more")
    params = inspect.signature(file_download.http_get).parameters
    for name in ("resume_size", "headers", "expected_size", "tqdm_class"):
        if name not in params:
            raise HubAdapterError(f"huggingface_hub's http_get no longer takes {name!r}")
