"""Models named on the Hugging Face Hub: read their GGUF headers with HTTP range requests.

``REPO/FILE`` (e.g. ``TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF/mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf``)
is profiled without downloading the file: huggingface_hub's ``HfFileSystem`` fetches only the
blocks the header reader asks for, at most :data:`MAX_REMOTE_HEADER` bytes per file. The
endpoint and token are huggingface_hub's own (``HF_ENDPOINT``, ``HF_TOKEN`` or the saved
login).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixdesk.core.gguf.header import GGUFHeader, read_header
from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.core.gguf.profile import SPLIT_RE, ModelProfile, profile_from_headers, profile_local
from mixdesk.errors import InvalidArgumentError, MixdeskError

log = logging.getLogger(__name__)

MAX_REMOTE_HEADER = 8 << 20
BLOCK_SIZE = 1 << 20


class HubError(MixdeskError):
    """The Hub could not give what was asked (missing, gated, unreachable)."""


class HubUnreachableError(HubError):
    """No answer from the Hub at all (no network, or ``HF_ENDPOINT`` names nothing)."""


class HubSizeMismatchError(HubError):
    """The Hub sent more bytes for a file than its metadata announced (refused past that size,
    so a lying server cannot fill the disk past the free-space check)."""


@dataclass(frozen=True)
class ModelRef:
    """A model named by the user: a local file, or a file in a Hub repository."""

    path: Path | None = None
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None

    @property
    def is_remote(self) -> bool:
        """Whether this names a file on the Hub."""
        return self.repo_id is not None

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}" if self.is_remote else str(self.path)


def parse_model_ref(text: str) -> ModelRef:
    """Read what the user typed: an existing local path, or ``OWNER/REPO/FILE.gguf[@REVISION]``.

    Raises:
        InvalidArgumentError: neither an existing file nor a Hub file name.
    """
    path = Path(text).expanduser()
    if path.exists():
        return ModelRef(path=path)
    spec, _, revision = text.partition("@")
    parts = spec.split("/")
    if len(parts) >= 3 and parts[-1].endswith(".gguf") and not text.startswith(("/", ".", "~")):
        return ModelRef(
            repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), revision=revision or None
        )
    if text.endswith(".gguf"):
        raise InvalidArgumentError(
            f"Model file not found: {text}. Check the path, or name a file on the Hub as OWNER/REPO/FILE.gguf."
        )
    raise InvalidArgumentError(
        f"'{text}' is neither a .gguf file here nor a Hub file (OWNER/REPO/FILE.gguf)."
    )


def hub_error(err: BaseException, repo_id: str, filename: str) -> HubError:
    from huggingface_hub import errors as hf_errors

    if isinstance(err, hf_errors.GatedRepoError):
        return HubError(
            f"{repo_id} is gated: accept its licence on the Hub, then set a token (HF_TOKEN or `hf auth login`)."
        )
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return HubError(
            f"There is no model repository {repo_id} on the Hub (if it is private, set a token)."
        )
    if isinstance(err, (hf_errors.EntryNotFoundError, FileNotFoundError)):
        return HubError(f"{repo_id} has no file {filename}; check the file name.")
    if isinstance(err, hf_errors.HfHubHTTPError):
        return HubError(
            f"The Hub refused the request for {repo_id}/{filename} ({err}); try again later."
        )
    return HubUnreachableError(
        f"Cannot reach the Hugging Face Hub for {repo_id}/{filename} ({type(err).__name__}); "
        "check the network connection (or HF_ENDPOINT) and try again."
    )


def split_names(filename: str) -> list[str]:
    """All part names of a split model from the name of one part (or ``[filename]``)."""
    m = SPLIT_RE.match(Path(filename).name)
    if not m:
        return [filename]
    count = int(m.group("count"))
    folder = filename[: len(filename) - len(Path(filename).name)]
    return [f"{folder}{m.group('stem')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def read_remote_header(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    fs: Any = None,
    max_bytes: int = MAX_REMOTE_HEADER,
    whole_file: bool = True,
) -> GGUFHeader:
    """Read one remote file's GGUF header with range requests.

    ``whole_file=False`` is for the first piece of a ``.partXofY`` set, whose tensors run on
    into the next pieces (their offsets are not checked against this piece's size).

    Raises:
        HubError: missing, gated, unreachable.
        GGUFHeaderError: not a GGUF, damaged, or a header over ``max_bytes``.
    """
    from huggingface_hub import HfFileSystem

    fs = fs or HfFileSystem(skip_instance_cache=True)
    path = f"{repo_id}@{revision}/{filename}" if revision else f"{repo_id}/{filename}"
    try:
        size = int(fs.info(path)["size"])
        with fs.open(path, "rb", block_size=BLOCK_SIZE) as fh:
            return read_header(
                fh, name=filename, file_size=size if whole_file else None, max_bytes=max_bytes
            )
    except (GGUFHeaderError, MixdeskError):
        raise
    except Exception as err:  # every Hub or network failure becomes one sentence
        log.info("remote header %s/%s failed: %r", repo_id, filename, err)
        cause: BaseException = err
        if isinstance(err, FileNotFoundError):
            # HfFileSystem says "not found" for a missing or gated repo too: ask the Hub which.
            cause = _why_not_found(repo_id, revision) or err
        raise hub_error(cause, repo_id, filename) from err


def _why_not_found(repo_id: str, revision: str | None) -> BaseException | None:
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, revision=revision)
    except Exception as err:  # noqa: BLE001 - the error itself is the answer
        return err
    return None


def profile_remote(ref: ModelRef, *, fs: Any = None) -> ModelProfile:
    """Profile a Hub file (all parts of a split model) from its header(s) only."""
    assert ref.repo_id is not None
    assert ref.filename is not None
    headers = [
        read_remote_header(ref.repo_id, name, revision=ref.revision, fs=fs)
        for name in split_names(ref.filename)
    ]
    return profile_from_headers(headers)


def profile_ref(ref: ModelRef, *, fs: Any = None) -> ModelProfile:
    """Profile a local or remote model."""
    if ref.is_remote:
        return profile_remote(ref, fs=fs)
    assert ref.path is not None
    return profile_local(ref.path)
