"""The built-in catalog of Mixtral models (``resources/catalog.json``)."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogFile:
    """One downloadable quantisation."""

    quant: str
    filename: str
    size: int
    split: bool = False
    recommended: bool = False


@dataclass(frozen=True)
class CatalogModel:
    """A model family in the catalog."""

    id: str
    title: str
    repo_id: str
    layout: str  # "legacy" (converted after download) or "merged"
    instruct: bool
    files: list[CatalogFile] = field(default_factory=list)


def load_catalog() -> list[CatalogModel]:
    """Read the catalog shipped with MixDesk."""
    text = (
        importlib.resources.files("mixdesk.resources")
        .joinpath("catalog.json")
        .read_text(encoding="utf-8")
    )
    data = json.loads(text)
    return [
        CatalogModel(
            id=m["id"],
            title=m["title"],
            repo_id=m["repo_id"],
            layout=m["layout"],
            instruct=m["instruct"],
            files=[CatalogFile(**f) for f in m.get("files", [])],
        )
        for m in data["models"]
    ]
