"""What a Hub repository offers: its GGUF models with sizes, split parts grouped as one model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mixdesk.core.gguf.profile import SPLIT_RE
from mixdesk.core.hub.remote_header import HubError, hub_error

_JOIN_RE = re.compile(r"^(?P<stem>.*\.gguf)\.part(?P<no>\d+)of(?P<count>\d+)$")
_QUANT_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(IQ\d_[A-Z]+|Q\d_K(?:_[SML])?|Q\d_\d|BF16|F16|F32)(?![A-Za-z0-9])"
)


@dataclass(frozen=True)
class HubFileInfo:
    """One file in a Hub repository, with the LFS metadata used to verify it."""

    repo_id: str
    filename: str
    size: int
    sha256: str | None
    revision: str


@dataclass(frozen=True)
class HubModel:
    """A model in a repository: one file, the parts of a split model, or pieces to join."""

    name: str
    files: tuple[HubFileInfo, ...]
    quant: str | None
    #: ``.gguf.partXofY`` pieces that must be concatenated into one file before loading.
    join: bool = False

    @property
    def size(self) -> int:
        """Bytes to download."""
        return sum(f.size for f in self.files)

    @property
    def filename(self) -> str:
        """The file to load (first part), or the joined file's name."""
        first = self.files[0].filename
        if self.join:
            m = _JOIN_RE.match(first)
            return m.group("stem") if m else first
        return first


def quant_of(filename: str) -> str | None:
    """The quantisation named in a file name ("Q4_K_M"), if any."""
    m = _QUANT_RE.search(filename)
    return m.group(1).upper() if m else None


def group_models(files: list[HubFileInfo]) -> list[HubModel]:
    """Group a repository's files into models, split parts and pieces together, in name order."""
    groups: dict[tuple[str, str], list[tuple[int, HubFileInfo]]] = {}
    for f in files:
        base = f.filename
        if m := SPLIT_RE.match(base.rsplit("/", 1)[-1]):
            key = ("split", base[: len(base) - len(m.group(0))] + m.group("stem"))
            groups.setdefault(key, []).append((int(m.group("no")), f))
        elif m := _JOIN_RE.match(base):
            groups.setdefault(("join", m.group("stem")), []).append((int(m.group("no")), f))
        elif base.endswith(".gguf"):
            groups.setdefault(("single", base), []).append((1, f))
    models = []
    for (kind, stem), members in groups.items():
        ordered = tuple(f for _, f in sorted(members, key=lambda m: m[0]))
        name = stem.rsplit("/", 1)[-1]
        name = name[: -len(".gguf")] if name.endswith(".gguf") else name
        models.append(HubModel(name=name, files=ordered, quant=quant_of(stem), join=kind == "join"))
    return sorted(models, key=lambda m: m.name)


def list_models(repo_id: str, *, revision: str | None = None, api: Any = None) -> list[HubModel]:
    """The GGUF models of a Hub repository, with sizes and sha256 from its LFS metadata.

    Raises:
        HubError: missing, gated, unreachable.
    """
    from huggingface_hub import HfApi

    api = api or HfApi()
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as err:  # every Hub or network failure becomes one sentence
        raise hub_error(err, repo_id, "") from err
    commit = info.sha or revision or "main"
    files = []
    for s in info.siblings or []:
        name = s.rfilename
        if not (name.endswith(".gguf") or _JOIN_RE.match(name)):
            continue
        lfs = getattr(s, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        size = s.size if s.size is not None else (getattr(lfs, "size", 0) if lfs is not None else 0)
        files.append(HubFileInfo(repo_id, name, int(size or 0), sha, commit))
    models = group_models(files)
    if not models:
        raise HubError(
            f"{repo_id} has no GGUF files; MixDesk runs GGUF models (look for a repo ending in -GGUF)."
        )
    return models


def pick_model(
    models: list[HubModel], *, filename: str | None = None, quant: str | None = None
) -> HubModel:
    """Choose the model the user asked for by file name or quantisation (default Q4_K_M).

    Raises:
        HubError: nothing matches (the message lists what there is).
    """
    if filename:
        for m in models:
            if filename in (m.filename, m.name, *(f.filename for f in m.files)):
                return m
        raise HubError(
            f"There is no {filename} here; choose one of: {', '.join(m.filename for m in models)}."
        )
    wanted = (quant or "Q4_K_M").upper()
    matches = [m for m in models if m.quant == wanted]
    if matches:
        return matches[0]
    if quant is None and len(models) == 1:
        return models[0]
    have = sorted({m.quant for m in models if m.quant})
    raise HubError(
        f"There is no {wanted} file here; available: {', '.join(have) or 'none'} (use --quant or --file)."
    )
