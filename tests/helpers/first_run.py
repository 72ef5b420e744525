"""The first-run page's catalog and Hub for tests (also the screenshots)."""

from __future__ import annotations

from pathlib import Path

from mixdesk.core.hub.catalog import CatalogFile, CatalogModel
from tests.helpers.hub_server import HubFile, HubRepo, HubState

REPO = "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"


BIG_REPO = "bartowski/Mixtral-8x22B-v0.1-GGUF"


SPARSE_SHA = "ab" * 32  # the data is a hole; nobody verifies it when reading headers


def catalog_of(headers: dict[str, Path]) -> list[CatalogModel]:
    small = CatalogModel(
        id="8x7b",
        title="Mixtral 8x7B Instruct v0.1",
        repo_id=REPO,
        layout="legacy",
        instruct=True,
        files=[
            CatalogFile(q, headers[q].name, headers[q].stat().st_size) for q in ("Q2_K", "Q4_K_M")
        ],
    )
    big = CatalogModel(
        id="8x22b",
        title="Mixtral 8x22B (instruct for this test)",
        repo_id=BIG_REPO,
        layout="merged",
        instruct=True,
        files=[CatalogFile("Q4_K_M", headers["8x22b"].name, 0, split=True)],
    )
    return [small, big]


def serve_headers(state: HubState, headers: dict[str, Path]) -> None:
    small = HubRepo()
    for q in ("Q2_K", "Q4_K_M"):
        small.files[headers[q].name] = HubFile(path=headers[q], sha256=SPARSE_SHA)
    state.repos[REPO] = small
    big = HubRepo()
    for part in sorted(headers["8x22b"].parent.glob("Mixtral-8x22B-v0.1-Q4_K_M-*-of-*.gguf")):
        big.files[part.name] = HubFile(path=part, sha256=SPARSE_SHA)
    state.repos[BIG_REPO] = big
