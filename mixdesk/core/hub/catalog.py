"""The built-in catalog of Mixtral models (``resources/catalog.json``)."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CatalogFile:
    """One downloadable quantisation."""

    quant: str
    filename: str
    size: int
    split: bool = False
    recommended: bool = False


@dataclass(frozen=True)
class KnownShape:
    """A catalog model's architecture as its files' headers give it, known without the
    network: with a file's quantisation it makes the file's tensor table (see
    :func:`mixdesk.core.hub.known_shapes.known_profile`), so the planner can judge a file
    while the Hub is out of reach."""

    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_expert: int
    n_expert_used: int
    n_vocab: int
    context_length: int
    architecture: str = "llama"


@dataclass(frozen=True)
class CatalogModel:
    """A model family in the catalog."""

    id: str
    title: str
    repo_id: str
    layout: str  # "legacy" (converted after download) or "merged"
    instruct: bool
    files: list[CatalogFile] = field(default_factory=list)
    #: The architecture of its files (None: not known; the Hub's headers are then needed).
    shape: KnownShape | None = None


def catalog_from_json(text: str) -> list[CatalogModel]:
    """The catalog in ``text`` (the format of ``resources/catalog.json``)."""
    data = json.loads(text)
    return [_model(m) for m in data["models"]]


def _model(m: dict[str, Any]) -> CatalogModel:
    shape = m.get("shape")
    return CatalogModel(
        id=m["id"],
        title=m["title"],
        repo_id=m["repo_id"],
        layout=m["layout"],
        instruct=m["instruct"],
        files=[CatalogFile(**f) for f in m.get("files", [])],
        shape=KnownShape(**shape) if isinstance(shape, dict) else None,
    )


def load_catalog() -> list[CatalogModel]:
    """Read the catalog shipped with MixDesk."""
    text = (
        importlib.resources.files("mixdesk.resources")
        .joinpath("catalog.json")
        .read_text(encoding="utf-8")
    )
    return catalog_from_json(text)


def catalog_entry(repo_id: str, catalog: list[CatalogModel] | None = None) -> CatalogModel | None:
    """The catalog's entry for ``repo_id`` (None: not in the catalog)."""
    entries = catalog if catalog is not None else load_catalog()
    return next((m for m in entries if m.repo_id == repo_id), None)
