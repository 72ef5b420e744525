"""Planning Mixtral 8x7B and 8x22B on the machines of the source articles (header-only files)."""

from __future__ import annotations

import pytest

from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.machine.hardware import GIB, MIB, GpuInfo, HardwareInfo
from mixdesk.core.planning.memory import GPU_MARGIN
from mixdesk.core.planning.planner import plan_offload
from mixdesk.core.planning.types import OffloadPlan
from mixdesk.core.planning.words import describe
from tests.helpers import model_factory as mf

V100 = GpuInfo(
    name="Tesla V100-SXM2-16GB", backend="cuda", total_bytes=16160 * MIB, free_bytes=15860 * MIB
)
H100 = GpuInfo(
    name="NVIDIA H100 80GB HBM3", backend="cuda", total_bytes=81559 * MIB, free_bytes=81000 * MIB
)


def machine(*gpus: GpuInfo, ram: int = 64 * GIB) -> HardwareInfo:
    return HardwareInfo(
        ram_total_bytes=ram,
        ram_available_bytes=ram,
        physical_cores=8,
        logical_cores=8,
        gpus=list(gpus),
        gpu_offload=True,
    )


@pytest.fixture(scope="session")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelProfile]:
    d = tmp_path_factory.mktemp("mixtral")
    out = {}
    for quant in ("Q2_K", "Q4_K_M"):
        out[f"legacy-{quant}"] = profile_local(mf.mixtral_header_file(d, quant, legacy=True))
        types = mf.modern_quant_types(d / "probe", quant)
        out[f"merged-{quant}"] = profile_local(mf.mixtral_header_file(d, quant, types=types))
    types = mf.modern_quant_types(d / "probe", "Q4_K_M", n_layers=56)
    first = mf.mixtral_header_file(
        d,
        "Q4_K_M",
        cfg=mf.MIXTRAL_8X22B,
        types=types,
        split_count=5,
        name="mixtral-8x22b-instruct-v0.1.Q4_K_M",
    )
    out["8x22b"] = profile_local(first)
    return out


def _assert_within_budget(plan: OffloadPlan) -> None:
    gpu = plan.gpu
    assert gpu is not None
    assert gpu.used_bytes - gpu.margin_bytes <= gpu.free_bytes - GPU_MARGIN


@pytest.mark.parametrize(("quant", "thebloke_gb"), [("Q2_K", 15.64), ("Q4_K_M", 26.44)])
def test_legacy_files_match_thebloke_sizes(
    mixtral: dict[str, ModelProfile], quant: str, thebloke_gb: float
) -> None:
    profile = mixtral[f"legacy-{quant}"]
    assert profile.legacy_expert_layout
    assert profile.n_layers == 32 and profile.n_expert == 8 and profile.n_expert_used == 2
    assert profile.file_bytes / 1e9 == pytest.approx(thebloke_gb, rel=0.02)
    assert len(profile.expert_tensor_names) == 32 * 3 * 8


@pytest.mark.parametrize(("quant", "article_layers"), [("Q2_K", 28), ("Q4_K_M", 19)])
@pytest.mark.parametrize("layout", ["legacy", "merged"])
def test_v100_golden_cases(
    mixtral: dict[str, ModelProfile], quant: str, article_layers: int, layout: str
) -> None:
    profile = mixtral[f"{layout}-{quant}"]
    plan = plan_offload(profile, machine(V100), n_ctx=2048, type_k="f16", type_v="f16")
    _assert_within_budget(plan)
    assert plan.fit == "partial"
    assert plan.n_ctx == 2048
    fits_article = plan_offload(profile, machine(V100), n_ctx=2048, n_gpu_layers=article_layers)
    gpu = fits_article.gpu
    assert gpu is not None
    if gpu.used_bytes <= gpu.free_bytes:  # our accounting says the article's choice fits...
        assert plan.n_gpu_layers >= article_layers  # ...so the plan puts at least as many there
    # one more layer than planned would not fit
    more = plan_offload(profile, machine(V100), n_ctx=2048, n_gpu_layers=plan.n_gpu_layers + 1).gpu
    assert more is not None
    assert more.used_bytes > more.free_bytes
    assert not plan.op_offload


def test_v100_chosen_numbers(mixtral: dict[str, ModelProfile]) -> None:
    """The numbers quoted in the closing note (legacy files, as downloaded from TheBloke)."""
    q2 = plan_offload(mixtral["legacy-Q2_K"], machine(V100), n_ctx=2048)
    q4 = plan_offload(mixtral["legacy-Q4_K_M"], machine(V100), n_ctx=2048)
    assert q2.n_gpu_layers >= 28
    assert q4.n_gpu_layers >= 19


def test_mixtral_kv_cache_is_128_kib_per_token(mixtral: dict[str, ModelProfile]) -> None:
    plan = plan_offload(mixtral["merged-Q4_K_M"], machine(), n_ctx=2048, type_k="f16", type_v="f16")
    assert plan.cpu.kv_bytes == 256 * MIB  # 2048 tokens x 128 KiB, as seeds.md says


def test_8x22b_split_on_h100_and_cpu(mixtral: dict[str, ModelProfile]) -> None:
    profile = mixtral["8x22b"]
    assert len(profile.files) == 5
    assert profile.n_layers == 56
    assert 75e9 < profile.weights_bytes < 95e9
    h100 = plan_offload(profile, machine(H100, ram=128 * GIB))
    _assert_within_budget(h100)
    assert h100.fit == "partial"
    assert 45 <= h100.n_gpu_layers < 56
    assert (
        h100.gpu is not None and h100.gpu.used_bytes > 70 * GIB
    )  # "over 70 GB of GPU memory in use"
    cpu = plan_offload(profile, machine(ram=128 * GIB))
    assert cpu.fit == "cpu"
    assert cpu.n_gpu_layers == 0
    assert cpu.cpu.weights_bytes == profile.weights_bytes
    small = plan_offload(profile, machine(ram=32 * GIB))
    assert small.fit == "none"
    assert small.shortfall_bytes > 40 * GIB
    assert "will not fit" in " ".join(describe(small))


def test_unset_context_shrinks_to_fit_more_layers(mixtral: dict[str, ModelProfile]) -> None:
    profile = mixtral["merged-Q2_K"]
    gpu = GpuInfo(name="RTX 4090", backend="cuda", total_bytes=24 * GIB, free_bytes=15500 * MIB)
    auto = plan_offload(profile, machine(gpu))
    fixed = plan_offload(profile, machine(gpu), n_ctx=4096)
    assert fixed.n_ctx == 4096
    # on this card a 2048-token context puts one more layer on the GPU, and the plan says so
    assert auto.n_gpu_layers == fixed.n_gpu_layers + 1
    assert (auto.n_ctx, auto.ctx_reduced_from) == (2048, 4096)
    assert "reduced from 4096" in " ".join(describe(auto))


def test_everything_fits_on_a_big_gpu(mixtral: dict[str, ModelProfile]) -> None:
    plan = plan_offload(mixtral["merged-Q4_K_M"], machine(H100))
    assert plan.fit == "full"
    assert plan.n_gpu_layers == 33  # 32 layers and the output layer
    assert plan.op_offload
    assert plan.gpu is not None and plan.gpu.weights_bytes > plan.cpu.weights_bytes
    assert plan.speed is not None and plan.speed.eval_tps > 10


def test_cpu_only_build_ignores_the_gpu(mixtral: dict[str, ModelProfile]) -> None:
    plan = plan_offload(mixtral["merged-Q2_K"], machine(V100), gpu_offload_supported=False)
    assert plan.n_gpu_layers == 0
    assert "CPU-only" in describe(plan)[0]


def test_quantised_kv_cache_and_flash_attention_shrink_the_plan(
    mixtral: dict[str, ModelProfile],
) -> None:
    profile = mixtral["merged-Q4_K_M"]
    f16 = plan_offload(profile, machine(), n_ctx=32768)
    q8 = plan_offload(profile, machine(), n_ctx=32768, type_k="q8_0", type_v="q8_0")
    assert f16.cpu.kv_bytes == 4 * GIB  # 4 GiB at 32k, as seeds.md says
    assert q8.cpu.kv_bytes < f16.cpu.kv_bytes * 0.6
    assert q8.flash_attn  # a quantised V cache needs flash attention
    assert q8.cpu.compute_bytes < f16.cpu.compute_bytes
