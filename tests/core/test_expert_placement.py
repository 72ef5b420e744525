"""Experts in RAM at tensor granularity: the GPU filled to its margin one expert tensor at a
time, a partial boundary layer, and the first or the last layers' experts in RAM (Mixtral
8x7B as TheBloke made it, header only, on the seed article's V100)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.experts import expert_tensors
from mixdesk.core.planning.types import ExpertsOrder, Fit, OffloadPlan, PartialLayer
from tests.helpers import model_factory as mf
from tests.helpers.machines import V100


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> ModelProfile:
    return profile_local(
        mf.mixtral_header_file(tmp_path_factory.mktemp("mixtral"), "Q4_K_M", legacy=True)
    )


def experts_plan(profile: ModelProfile, **choices: object) -> OffloadPlan:
    return make_plan(
        profile,
        V100,
        LoadChoices(strategy="experts", n_ctx=2048, **choices),  # type: ignore[arg-type]
        calibration=Calibration(),
    )


def layers_of(plan: OffloadPlan) -> list[int]:
    return sorted({int(name.split(".")[1]) for name in plan.cpu_tensors})


@pytest.mark.parametrize("order", ["first", "last"])
def test_the_gpu_is_filled_to_its_margin_tensor_by_tensor(
    mixtral: ModelProfile, order: ExpertsOrder
) -> None:
    plan = experts_plan(mixtral, experts_from=order)
    gpu = plan.gpu
    assert plan.fit is Fit.EXPERTS and gpu is not None
    assert gpu.used_bytes <= gpu.free_bytes
    # one expert tensor fewer in RAM would not fit: the device is full to its margin
    tighter = experts_plan(
        mixtral, experts_from=order, expert_tensors_in_ram=len(plan.cpu_tensors) - 1
    ).gpu
    assert tighter is not None and tighter.used_bytes > tighter.free_bytes
    # the boundary layer keeps its attention and up experts on the GPU; its down goes first
    partial = plan.partial_layer
    assert partial is not None and 0 < partial.in_ram < partial.of == 3
    assert f"blk.{partial.layer}.ffn_down_exps.weight" in plan.cpu_tensors
    assert f"blk.{partial.layer}.ffn_up_exps.weight" not in plan.cpu_tensors
    # whole layers only (what MixDesk did before) would leave a tensor or more of VRAM unused
    whole = experts_plan(mixtral, experts_from=order, experts_in_ram=plan.experts_in_ram + 1).gpu
    assert whole is not None
    biggest = max(t.nbytes for t in expert_tensors(mixtral))
    assert gpu.weights_bytes - whole.weights_bytes >= biggest


def test_first_and_last_fill_the_same_vram_from_opposite_ends(mixtral: ModelProfile) -> None:
    first = experts_plan(mixtral, experts_from="first")
    last = experts_plan(mixtral, experts_from="last")
    n = mixtral.n_layers
    assert layers_of(first)[0] == 0 and layers_of(last)[-1] == n - 1
    assert layers_of(first) == list(range(len(layers_of(first))))
    assert layers_of(last) == list(range(n - len(layers_of(last)), n))
    assert (first.experts_order, last.experts_order) == ("first", "last")
    assert first.gpu is not None and last.gpu is not None
    biggest = max(t.nbytes for t in expert_tensors(mixtral))
    assert abs(first.gpu.used_bytes - last.gpu.used_bytes) <= biggest
    for plan in (first, last):  # the bytes follow the tensors, wherever they are
        in_ram = sum(t.nbytes for t in expert_tensors(mixtral) if t.name in plan.cpu_tensors)
        assert plan.facts.experts_ram_bytes == in_ram
        assert plan.cpu.weights_bytes == mixtral.token_embd_bytes + in_ram
        assert plan.gpu is not None
        assert plan.gpu.weights_bytes + plan.cpu.weights_bytes == mixtral.weights_bytes


def test_experts_in_ram_k_still_means_whole_layers(mixtral: ModelProfile) -> None:
    """``--experts-in-ram K``: the expert tensors of K whole layers, from either end."""
    first = experts_plan(mixtral, experts_in_ram=3, experts_from="first")
    last = experts_plan(mixtral, experts_in_ram=3, experts_from="last")
    for plan, layers in ((first, [0, 1, 2]), (last, [29, 30, 31])):
        assert plan.experts_in_ram == 3 and plan.partial_layer is None
        assert len(plan.cpu_tensors) == 9 and layers_of(plan) == layers
    assert first.placement_words.endswith("experts of layers 0-2 in RAM")
    assert last.placement_words.endswith("experts of layers 29-31 in RAM")


def test_legacy_experts_are_planned_by_the_names_llama_cpp_loads(mixtral: ModelProfile) -> None:
    """TheBloke's file has one tensor per expert; llama.cpp loads the converted file, whose
    experts of one kind in one layer are one tensor of the same bytes."""
    assert mixtral.legacy_expert_layout
    plan = experts_plan(mixtral, expert_tensors_in_ram=5, experts_from="first")
    assert plan.cpu_tensors == (
        "blk.0.ffn_down_exps.weight",
        "blk.0.ffn_gate_exps.weight",
        "blk.0.ffn_up_exps.weight",
        "blk.1.ffn_down_exps.weight",
        "blk.1.ffn_gate_exps.weight",
    )
    assert plan.partial_layer == PartialLayer(1, 2, 3) and plan.experts_in_ram == 1
    legacy = [t for t in mixtral.tensors if re.match(r"blk\.0\.ffn_down\.\d+\.weight$", t.name)]
    assert len(legacy) == 8
    merged = next(t for t in expert_tensors(mixtral) if t.name == "blk.0.ffn_down_exps.weight")
    assert merged.nbytes == sum(t.nbytes for t in legacy)


def test_a_whole_model_that_fits_keeps_no_expert_in_ram(models: dict[str, Path]) -> None:
    plan = experts_plan(profile_local(models["q4_k_m"]))
    assert plan.cpu_tensors == () and plan.partial_layer is None and plan.fit is Fit.FULL
