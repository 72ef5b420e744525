"""The first-run page's catalog and Hub for tests (also the screenshots)."""

from __future__ import annotations

from pathlib import Path

from mixdesk.core.hub.catalog import CatalogFile, CatalogModel, KnownShape, catalog_from_json
from tests.helpers import model_factory as mf
from tests.helpers.hub_server import HubFile, HubRepo, HubState

REPO = "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"


BIG_REPO = "bartowski/Mixtral-8x22B-v0.1-GGUF"


SPARSE_SHA = "ab" * 32  # the data is a hole; nobody verifies it when reading headers


def shape_of(cfg: dict[str, object]) -> KnownShape:
    """The catalog's shape of a model the factory writes headers for (``mf.MIXTRAL_8X7B``)."""
    return KnownShape(
        **{
            k: int(cfg[k])  # type: ignore[call-overload]
            for k in ("n_layers", "n_embd", "n_ff", "n_head", "n_head_kv", "n_expert")
        },
        n_expert_used=int(cfg["n_expert_used"]),  # type: ignore[call-overload]
        n_vocab=int(cfg["n_vocab"]),  # type: ignore[call-overload]
        context_length=int(cfg["n_ctx_train"]),  # type: ignore[call-overload]
    )


def shipped_catalog() -> list[CatalogModel]:
    """The catalog this checkout ships (resources/catalog.json), read from the tree."""
    path = Path(__file__).resolve().parents[2] / "resources" / "catalog.json"
    return catalog_from_json(path.read_text(encoding="utf-8"))


def catalog_of(headers: dict[str, Path]) -> list[CatalogModel]:
    """The test headers' files as catalog entries, with their models' shapes."""
    parts = sorted(headers["8x22b"].parent.glob("Mixtral-8x22B-v0.1-Q4_K_M-*-of-*.gguf"))
    small = CatalogModel(
        id="8x7b",
        title="Mixtral 8x7B Instruct v0.1",
        repo_id=REPO,
        layout="legacy",
        instruct=True,
        files=[
            CatalogFile(q, headers[q].name, headers[q].stat().st_size) for q in ("Q2_K", "Q4_K_M")
        ],
        shape=shape_of(mf.MIXTRAL_8X7B),
    )
    big = CatalogModel(
        id="8x22b",
        title="Mixtral 8x22B (instruct for this test)",
        repo_id=BIG_REPO,
        layout="merged",
        instruct=True,
        files=[
            CatalogFile(
                "Q4_K_M", headers["8x22b"].name, sum(p.stat().st_size for p in parts), split=True
            )
        ],
        shape=shape_of(mf.MIXTRAL_8X22B),
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


def first_run_headers(d: Path) -> dict[str, Path]:
    """Mixtral 8x7B Q2_K and Q4_K_M (TheBloke's layout) and 8x22B Q4_K_M (split, today's
    quantiser's types): real headers, sparse data."""
    types = mf.modern_quant_types(d / "probe", "Q4_K_M", n_layers=56)
    out = {
        q: mf.mixtral_header_file(d, q, legacy=True, name=f"mixtral-8x7b-instruct-v0.1.{q}")
        for q in ("Q2_K", "Q4_K_M")
    }
    out["8x22b"] = mf.mixtral_header_file(
        d,
        "Q4_K_M",
        cfg=mf.MIXTRAL_8X22B,
        types=types,
        split_count=2,
        name="Mixtral-8x22B-v0.1-Q4_K_M",
    )
    return out
