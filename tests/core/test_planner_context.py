"""The automatic context: 4096 tokens kept over one more layer when flash attention and a
q8_0 KV cache make it cheap (and the plan says so); f16 still trades it for more layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.machine.hardware import MIB, GpuInfo, HardwareInfo
from mixdesk.core.planning.planner import plan_offload
from mixdesk.core.planning.words import describe
from tests.helpers import model_factory as mf


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> ModelProfile:
    path: Path = mf.mixtral_header_file(tmp_path_factory.mktemp("ctx"), "Q4_K_M", legacy=True)
    return profile_local(path)


def _gpu(free_mib: int) -> HardwareInfo:
    return HardwareInfo(
        ram_total_bytes=64 << 30,
        ram_available_bytes=56 << 30,
        physical_cores=8,
        logical_cores=16,
        gpus=[GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16160 * MIB, free_mib * MIB)],
        gpu_offload=True,
    )


def _free_where_2048_gains_one_layer(profile: ModelProfile) -> HardwareInfo:
    """A V100's free memory at which the 2048-token context fits exactly one layer more."""
    for free in range(15860, 9000, -16):
        hw = _gpu(free)
        small = plan_offload(profile, hw, n_ctx=2048, flash_attn=True, type_k="q8_0", type_v="q8_0")
        large = plan_offload(profile, hw, n_ctx=4096, flash_attn=True, type_k="q8_0", type_v="q8_0")
        if small.n_gpu_layers == large.n_gpu_layers + 1:
            return hw
    raise AssertionError("no such free memory")


def test_flash_attention_and_q8_0_keep_4096_over_one_more_layer(mixtral: ModelProfile) -> None:
    hw = _free_where_2048_gains_one_layer(mixtral)
    plan = plan_offload(mixtral, hw, flash_attn=True, type_k="q8_0", type_v="q8_0")
    fixed = plan_offload(mixtral, hw, n_ctx=4096, flash_attn=True, type_k="q8_0", type_v="q8_0")
    assert plan.n_ctx == 4096 and plan.ctx_reduced_from is None
    assert plan.n_gpu_layers == fixed.n_gpu_layers
    said = " ".join(describe(plan))
    assert "Context 4096 tokens kept rather than one more layer at 2048" in said


def test_an_f16_cache_still_trades_context_for_layers(mixtral: ModelProfile) -> None:
    for free in range(15860, 9000, -16):
        hw = _gpu(free)
        small = plan_offload(mixtral, hw, n_ctx=2048)
        large = plan_offload(mixtral, hw, n_ctx=4096)
        if small.n_gpu_layers > large.n_gpu_layers:
            plan = plan_offload(mixtral, hw)
            assert plan.n_ctx == 2048 and plan.ctx_reduced_from == 4096
            assert "kept rather than one more layer" not in " ".join(describe(plan))
            return
    raise AssertionError("no such free memory")
