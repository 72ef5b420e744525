"""A catalog file's profile without the network: the tensor types llama.cpp's quantiser
picks, checked against the installed llama.cpp, and the built-in files' listed sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.catalog import CatalogFile, CatalogModel
from mixdesk.core.hub.known_shapes import known_profile, tensor_type
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.planning.calibration import Calibration
from tests.helpers import model_factory as mf
from tests.helpers.first_run import shape_of, shipped_catalog
from tests.helpers.machines import V100


@pytest.mark.parametrize(
    ("quant", "n_layers"),
    [("Q2_K", 32), ("Q3_K_M", 56), ("Q4_K_M", 32), ("Q5_K_M", 56), ("Q8_0", 32)],
)
def test_the_types_are_the_ones_llama_cpps_quantiser_picks(
    tmp_path: Path, quant: str, n_layers: int
) -> None:
    """llama.cpp quantises a narrow 8-expert model of Mixtral's depth; every tensor's type
    is the one the rules give (ffn_down's bigger layers depend on the depth)."""
    picked = mf.modern_quant_types(tmp_path, quant, n_layers=n_layers)
    assert len(picked) == 3 + 10 * n_layers
    ours = {}
    for name in picked:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        ours[name] = tensor_type(name, quant, layer=layer, n_layers=n_layers, legacy=False)
    assert ours == picked


@pytest.mark.parametrize("quant", ["Q2_K", "Q4_K_M"])
def test_legacy_files_profile_as_their_headers_do(tmp_path: Path, quant: str) -> None:
    """TheBloke's 2023 layout: the profile made without the network is the one its header
    gives, and so is the plan."""
    header = mf.mixtral_header_file(tmp_path, quant, legacy=True, name=f"legacy-{quant}")
    entry = CatalogModel(
        "m", "Mixtral 8x7B Instruct v0.1", "r/m", "legacy", True, shape=shape_of(mf.MIXTRAL_8X7B)
    )
    known = known_profile(entry, CatalogFile(quant, header.name, header.stat().st_size))
    real = profile_local(header)
    assert known is not None
    assert [(t.name, t.ggml_type, t.shape, t.nbytes) for t in known.tensors] == [
        (t.name, t.ggml_type, t.shape, t.nbytes) for t in real.tensors
    ]
    assert known.layer_bytes == real.layer_bytes and known.legacy_expert_layout
    plans = [make_plan(p, V100, LoadChoices(), calibration=Calibration()) for p in (known, real)]
    assert plans[0].n_gpu_layers == plans[1].n_gpu_layers
    assert plans[0].speed == plans[1].speed


def test_every_built_in_file_is_known_within_one_percent_of_its_listed_size() -> None:
    catalog = shipped_catalog()
    checked = 0
    for entry in catalog:
        assert entry.shape is not None, entry.id
        for file in entry.files:
            profile = known_profile(entry, file)
            assert profile is not None, file.filename
            assert abs(profile.weights_bytes / file.size - 1) < 0.01, file.filename
            assert profile.legacy_expert_layout == (entry.layout == "legacy")
            checked += 1
    assert checked == 14


def test_a_file_of_unknown_shape_or_quantisation_is_not_guessed() -> None:
    entry = CatalogModel("m", "M", "r/m", "merged", True)
    assert known_profile(entry, CatalogFile("Q4_K_M", "m.gguf", 1)) is None
    shaped = CatalogModel("m", "M", "r/m", "merged", True, shape=shape_of(mf.MIXTRAL_8X7B))
    assert known_profile(shaped, CatalogFile("IQ1_S", "m.gguf", 1)) is None
