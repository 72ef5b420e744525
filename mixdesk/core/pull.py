"""Getting a model from the Hub into the library: choose, plan, download, join, convert, register."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.convert import convert_legacy, needs_conversion
from mixdesk.core.download import Downloader, DownloadProgress
from mixdesk.core.gguf_header import read_local_header
from mixdesk.core.hardware import HardwareInfo
from mixdesk.core.hub import HubModel, list_models, pick_model
from mixdesk.core.library import Library, LibraryEntry, model_name
from mixdesk.core.model_profile import ModelProfile, profile_from_headers
from mixdesk.core.planner import OffloadPlan, plan_offload
from mixdesk.core.remote import read_remote_header

log = logging.getLogger(__name__)


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
    """Concatenate ``.gguf.partXofY`` pieces into one file, then delete the pieces."""
    tmp = output.with_name(output.name + ".joining")
    with tmp.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
    os.replace(tmp, output)
    for piece in pieces:
        piece.unlink(missing_ok=True)
    return output


def pull(
    repo_id: str,
    *,
    filename: str | None = None,
    quant: str | None = None,
    revision: str | None = None,
    library: Library | None = None,
    hardware: HardwareInfo | None = None,
    on_plan: Callable[[ModelProfile, OffloadPlan], None] | None = None,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    on_convert: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> PullResult:
    """Download a model from a Hub repository into the library (resuming what is on disk).

    Raises:
        HubError, DownloadCancelled, DiskFullError, ChecksumMismatchError, ConversionError.
    """
    library = library or Library()
    model = pick_model(list_models(repo_id, revision=revision), filename=filename, quant=quant)
    first = model.files[0]
    have = library.find_download(repo_id, model.filename, first.sha256)
    if have is not None:
        return PullResult(have, model, already_had=True, converted=False, plan=None)

    plan = None
    profile = None
    if hardware is not None or on_plan is not None:
        profile = remote_profile(model)
        if hardware is not None:
            plan = plan_offload(profile, hardware)
            if on_plan is not None:
                on_plan(profile, plan)
    legacy = profile.legacy_expert_layout if profile is not None else False
    downloader = Downloader(library.root)
    remaining = sum(f.size - downloader.partial_bytes(f) for f in model.files)
    room = model.size if (legacy or model.join) else 0
    downloader.check_disk(remaining + room, what=f"Downloading {model.name}")
    paths = [
        downloader.download(f, on_progress=on_progress, cancel=cancel, extra_space=room)
        for f in model.files
    ]
    if model.join:
        paths = [join_pieces(paths, paths[0].with_name(Path(model.filename).name))]
    converted_from = None
    if needs_conversion(read_local_header(paths[0])) and len(paths) == 1:
        original = paths[0]
        merged = original.with_name(original.stem + ".merged.gguf")
        convert_legacy(original, merged, on_progress=on_convert)
        os.replace(merged, original)  # the original goes only after the result was checked
        converted_from = f"{model.filename} (legacy per-expert layout, sha256 {first.sha256})"
    entry = library.add(
        LibraryEntry(
            name=model_name(model.filename),
            path=str(paths[0]),
            parts=[str(p) for p in paths],
            repo_id=repo_id,
            filename=model.filename,
            revision=first.revision,
            sha256=first.sha256
            if len(model.files) == 1
            else ",".join(f.sha256 or "" for f in model.files),
            size=sum(p.stat().st_size for p in paths),
            converted_from=converted_from,
        )
    )
    log.info("pulled %s into %s", model.name, entry.path)
    return PullResult(
        entry, model, already_had=False, converted=converted_from is not None, plan=plan
    )


def import_model(
    path: Path,
    *,
    library: Library | None = None,
    on_convert: Callable[[int, int], None] | None = None,
) -> LibraryEntry:
    """Add a local GGUF to the library; a legacy Mixtral file is converted into the models folder.

    Raises:
        GGUFHeaderError: not a GGUF or damaged.
        ConversionError: the conversion failed.
    """
    library = library or Library()
    header = read_local_header(path)
    converted_from = None
    target = path
    if needs_conversion(header):
        target = library.root / "imported" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_legacy(path, target, on_progress=on_convert)
        converted_from = f"{path} (legacy per-expert layout)"
    return library.add(
        LibraryEntry(
            name=model_name(path.name),
            path=str(target.resolve()),
            parts=[str(target.resolve())],
            size=target.stat().st_size,
            converted_from=converted_from,
        )
    )
