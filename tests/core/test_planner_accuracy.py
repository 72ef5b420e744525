"""The planner's byte counts against llama.cpp's own accounting (the buffer sizes it logs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixdesk.core.engine import Engine, LoadConfig
from mixdesk.core.engine.protocol import BufferKind
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.machine.hardware import MIB, HardwareInfo
from mixdesk.core.planning.planner import plan_offload
from tests.helpers import model_factory as mf

CPU_ONLY = HardwareInfo(
    ram_total_bytes=64 << 30, ram_available_bytes=60 << 30, physical_cores=2, logical_cores=2
)
#: (n_ctx, kv type, flash attention)
SETTINGS = [
    (512, "f16", False),
    (512, "f16", True),
    (4096, "f16", False),
    (4096, "f16", True),
    (4096, "q8_0", True),
    (2048, "q4_0", True),
]


@pytest.fixture(scope="session")
def mid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mid-size model (n_embd 1024, 8 layers, 8 experts) as Q4_K_M: about 30 s once."""
    return mf.make_model(tmp_path_factory.mktemp("mid"), mf.MID, "Q4_K_M", name="mid")


def _close(predicted: int, logged: int) -> bool:
    return abs(predicted - logged) <= max(MIB, 0.03 * logged)


def _check(engine: Engine, path: Path, n_ctx: int, kv: str, fa: bool) -> None:
    info = engine.load(
        LoadConfig(str(path), n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=fa, use_mmap=False)
    )
    logged = info.buffers
    plan = plan_offload(
        profile_local(path), CPU_ONLY, n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=fa
    )
    cpu = plan.cpu
    model = logged.size("CPU", BufferKind.MODEL) + logged.size("CPU_REPACK", BufferKind.MODEL)
    kv_bytes = logged.size("CPU", BufferKind.KV)
    compute = logged.size("CPU", BufferKind.COMPUTE)
    what = f"{path.name} ctx={n_ctx} kv={kv} fa={fa}"
    assert _close(cpu.weights_bytes, model), f"model {what}: {cpu.weights_bytes} vs {model}"
    assert _close(cpu.kv_bytes, kv_bytes), f"KV {what}: {cpu.kv_bytes} vs {kv_bytes}"
    assert _close(cpu.compute_bytes, compute), (
        f"compute {what}: {cpu.compute_bytes / MIB:.2f} vs {compute / MIB:.2f} MiB"
    )


@pytest.mark.parametrize(("n_ctx", "kv", "fa"), SETTINGS)
@pytest.mark.parametrize("kind", ["f32", "q4_k_m", "q2_k"])
def test_tiny_models(
    engine: Engine, models: dict[str, Path], kind: str, n_ctx: int, kv: str, fa: bool
) -> None:
    _check(engine, models[kind], n_ctx, kv, fa)


@pytest.mark.parametrize(
    ("n_ctx", "kv", "fa"), [*SETTINGS, (8192, "f16", False), (8192, "f16", True)]
)
def test_mid_size_model(engine: Engine, mid_model: Path, n_ctx: int, kv: str, fa: bool) -> None:
    _check(engine, mid_model, n_ctx, kv, fa)
