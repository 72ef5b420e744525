"""Getting a model from the Hub into the library: choose, plan, download, join, convert, register.

A pull holds a lock for its model from start to finish (``FILE.pull.lock`` beside the
partial files), so two pulls of one model (two commands, the window and a command, a
button clicked twice) never write the same files: the second waits, or says the model is
already downloading. Each step leaves the disk in a state the next run continues from: a
verified file is recorded before it is moved into place (:mod:`mixdesk.core.hub.download`), a
conversion or a join writes to a temporary name that the next run removes, and split
pieces stay until the library row is written.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.gguf.convert import convert_legacy, needs_conversion
from mixdesk.core.gguf.header import GGUFHeader, read_local_header
from mixdesk.core.gguf.header_values import ArrayInfo
from mixdesk.core.gguf.profile import ModelProfile, profile_from_headers
from mixdesk.core.hub.api import HubModel, list_models, pick_model
from mixdesk.core.hub.download import Downloader, DownloadInProgressError
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.file_lock import FileLock
from mixdesk.core.hub.library import Library, LibraryEntry, model_name
from mixdesk.core.hub.remote_header import read_remote_header
from mixdesk.core.planning.types import OffloadPlan
from mixdesk.errors import CorruptModelError
from mixdesk.paths import ensure_dir, open_private

log = logging.getLogger(__name__)

#: Metadata keys that hold a count or a size (``llama.block_count``, ``llama.expert_count``...).
_COUNT_KEY = re.compile(r"(count|length|size)(_kv)?$")


@dataclass(frozen=True)
class PullResult:
    """What a pull did."""

    entry: LibraryEntry
    model: HubModel
    already_had: bool
    converted: bool
    plan: OffloadPlan | None


def remote_profile(model: HubModel) -> ModelProfile:
    """The model's profile from its remote header(s) only."""
    f0 = model.files[0]
    if model.join:
        header = read_remote_header(f0.repo_id, f0.filename, revision=f0.revision, whole_file=False)
        return profile_from_headers([header])
    headers = [read_remote_header(f.repo_id, f.filename, revision=f.revision) for f in model.files]
    return profile_from_headers(headers)


def join_pieces(pieces: list[Path], output: Path) -> Path:
    """Concatenate ``.gguf.partXofY`` pieces into one file (the pieces stay; the caller removes them)."""
    tmp = output.with_name(output.name + ".joining")
    with open_private(tmp, "wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
    os.replace(tmp, output)
    return output


def pull(
    repo_id: str,
    *,
    filename: str | None = None,
    quant: str | None = None,
    revision: str | None = None,
    library: Library,
    plan: Callable[[ModelProfile], OffloadPlan] | None = None,
    on_plan: Callable[[ModelProfile, OffloadPlan], None] | None = None,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    on_convert: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    wait: bool = False,
) -> PullResult:
    """Download a model from a Hub repository into the library (resuming what is on disk).

    Args:
        library: where the model goes (and is looked for: a model already there is kept).
        plan: plans the model for this machine from its remote header before any byte comes
            (the caller's planner: ``loading.make_plan`` with the machine and choices).
        wait: when another pull of the same model is running, wait for it (reporting the
            phase "waiting") instead of raising DownloadInProgressError.

    Raises:
        HubError, DownloadInProgressError, DownloadCancelled, DiskFullError,
        ChecksumMismatchError, ConversionError.
    """
    model = pick_model(list_models(repo_id, revision=revision), filename=filename, quant=quant)
    downloader = Downloader(library.root)
    lock = FileLock(downloader.lock_path(model.files[0], what="pull"))
    _take(lock, model, wait=wait, cancel=cancel, on_progress=on_progress)
    with lock:
        return _pull_locked(
            model,
            library=library,
            downloader=downloader,
            plan=plan,
            on_plan=on_plan,
            on_progress=on_progress,
            on_convert=on_convert,
            cancel=cancel,
        )


def _take(
    lock: FileLock,
    model: HubModel,
    *,
    wait: bool,
    cancel: threading.Event | None,
    on_progress: Callable[[DownloadProgress], None] | None,
) -> None:
    if lock.acquire():
        return
    if not wait:
        raise DownloadInProgressError(
            f"{model.filename} is already downloading (in another MixDesk window or command); "
            "wait for that download to finish."
        )
    log.info("waiting for another download of %s", model.filename)
    if on_progress is not None:
        on_progress(DownloadProgress(model.filename, 0, model.size, 0.0, None, "waiting"))
    if not lock.acquire(cancel=cancel, wait_s=math.inf):
        raise DownloadCancelled(f"Stopped waiting for the other download of {model.filename}.")


def _pull_locked(
    model: HubModel,
    *,
    library: Library,
    downloader: Downloader,
    plan: Callable[[ModelProfile], OffloadPlan] | None,
    on_plan: Callable[[ModelProfile, OffloadPlan], None] | None,
    on_progress: Callable[[DownloadProgress], None] | None,
    on_convert: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
) -> PullResult:
    first = model.files[0]
    have = library.find_download(first.repo_id, model.filename, first.sha256)
    _clean_leftovers(downloader, model, registered=have)
    if have is not None:
        return PullResult(have, model, already_had=True, converted=False, plan=None)

    planned = None
    profile = None
    if plan is not None or on_plan is not None:
        profile = remote_profile(model)
        if plan is not None:
            planned = plan(profile)
            if on_plan is not None:
                on_plan(profile, planned)
    single = len(model.files) == 1 and not model.join
    # A legacy file is merged while it downloads, so it needs its own size; a join, or a
    # legacy download begun by an older MixDesk (a plain .part), needs room for a second copy.
    old_partial = downloader.partial_path(first).exists()
    legacy = profile.legacy_expert_layout if profile is not None else old_partial
    room = model.size if (model.join or (legacy and old_partial)) else 0
    remaining = sum(
        f.size - downloader.partial_bytes(f) for f in model.files if downloader.verified(f) is None
    )
    downloader.check_disk(remaining + room, what=f"Downloading {model.name}")
    files = [
        downloader.download_file(
            f, on_progress=on_progress, cancel=cancel, extra_space=room, merge_experts=single
        )
        for f in model.files
    ]
    paths = [d.path for d in files]
    converted = files[0].converted
    if model.join:
        paths = [join_pieces(paths, paths[0].with_name(Path(model.filename).name))]
    if not converted and len(paths) == 1 and needs_conversion(read_local_header(paths[0])):
        original = paths[0]
        merged = original.with_name(original.stem + ".merged.gguf")
        convert_legacy(original, merged, on_progress=on_convert)
        if single:  # recorded first: a crash after the move still finds a verified file
            downloader.mark_done(first, merged, converted=True)
        os.replace(merged, original)  # the original goes only after the result was checked
        converted = True
    entry = library.add(
        LibraryEntry(
            name=model_name(model.filename),
            path=str(paths[0]),
            parts=[str(p) for p in paths],
            repo_id=first.repo_id,
            filename=model.filename,
            revision=first.revision,
            sha256=first.sha256
            if len(model.files) == 1
            else ",".join(f.sha256 or "" for f in model.files),
            size=sum(p.stat().st_size for p in paths),
            converted_from=f"{model.filename} (legacy per-expert layout, sha256 {first.sha256})"
            if converted
            else None,
        )
    )
    _clean_leftovers(downloader, model, registered=entry)
    log.info("pulled %s into %s", model.name, entry.path)
    return PullResult(entry, model, already_had=False, converted=converted, plan=planned)


def _clean_leftovers(
    downloader: Downloader, model: HubModel, *, registered: LibraryEntry | None
) -> None:
    """Remove what an interrupted pull of ``model`` left behind (the caller holds its lock)."""
    first = downloader.target_path(model.files[0])
    final = first.with_name(Path(model.filename).name) if model.join else first
    stem = final.name.removesuffix(".gguf")
    for name in (
        f"{final.name}.joining",
        f"{final.name}.converting",
        f"{stem}.merged.gguf",
        f"{stem}.merged.gguf.converting",
    ):
        leftover = final.with_name(name)
        if leftover.exists():
            log.info("removing %s, left by an interrupted pull", leftover)
            leftover.unlink()
    if registered is None:
        return
    kept = {Path(p) for p in registered.parts or [registered.path]}
    for f in model.files:
        downloader.forget(f)
        downloader.discard(f)
        piece = downloader.target_path(f)
        if model.join and piece not in kept:
            piece.unlink(missing_ok=True)


def check_importable(header: GGUFHeader) -> None:
    """Refuse a header that describes no usable model.

    Raises:
        CorruptModelError: no tensors, or a count that is not a finite, non-negative number.
        GGUFHeaderError: no architecture or layer count.
    """
    if not header.tensors:
        raise CorruptModelError(
            f"{header.name} has no tensors: it holds no model weights, so there is nothing to import."
        )
    for key, value in header.metadata.items():
        if isinstance(value, ArrayInfo) or not _COUNT_KEY.search(key.rsplit(".", 1)[-1]):
            continue
        for item in value if isinstance(value, list) else [value]:
            if (
                isinstance(item, (int, float))
                and not isinstance(item, bool)
                and not (math.isfinite(item) and item >= 0)
            ):
                raise CorruptModelError(
                    f"{header.name} is damaged: its {key} is {item}, which is not a count, "
                    "so it cannot be imported."
                )
    profile_from_headers([header])


def import_model(
    path: Path,
    *,
    library: Library,
    on_convert: Callable[[int, int], None] | None = None,
) -> LibraryEntry:
    """Add a local GGUF to the library; a legacy Mixtral file is converted into the models folder.

    Raises:
        GGUFHeaderError: not a GGUF or damaged.
        CorruptModelError: a GGUF that describes no usable model.
        ConversionError: the conversion failed.
    """
    header = read_local_header(path)
    check_importable(header)
    source = path.resolve()
    converted_from = None
    target = source
    if needs_conversion(header):
        converted_from = f"{source} (legacy per-expert layout)"
        earlier = next((e for e in library.entries() if e.converted_from == converted_from), None)
        target = (
            Path(earlier.path)
            if earlier is not None
            else library.free_path(library.root / "imported" / path.name)
        )
        ensure_dir(target.parent)
        target.with_name(target.name + ".converting").unlink(missing_ok=True)  # a crashed import's
        convert_legacy(path, target, on_progress=on_convert)
    return library.add(
        LibraryEntry(
            name=model_name(path.name),
            path=str(target),
            parts=[str(target)],
            size=target.stat().st_size,
            converted_from=converted_from,
        )
    )
