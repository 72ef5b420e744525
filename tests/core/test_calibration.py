"""The runtime overhead measured after a load, kept per device and version, used next time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine
from mixdesk.core.engine.protocol import Buffer, BufferKind, Buffers, ModelInfo
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import LoadRequest, load_model, plan_load
from mixdesk.core.machine.hardware import MIB
from mixdesk.core.planning import calibration
from mixdesk.core.planning.words import describe
from tests.helpers.devices import rpc_hardware
from tests.helpers.mixdesk_workers import WorkerProcess


def test_overhead_is_what_left_beyond_llama_cpps_buffers() -> None:
    info = ModelInfo(
        path="m.gguf",
        name="m",
        architecture="llama",
        n_layers=4,
        n_gpu_layers=5,
        n_ctx=512,
        n_ctx_train=512,
        n_vocab=10,
        n_params=1,
        size_bytes=1,
        chat_template_source="gguf",
        system_prompt_folded=False,
        load_s=0.1,
        n_threads=1,
        buffers=Buffers(
            (
                Buffer("CUDA0", BufferKind.MODEL, 100 * MIB),
                Buffer("CUDA0", BufferKind.KV, 10 * MIB),
                Buffer("CUDA0", BufferKind.COMPUTE, 20 * MIB),
                Buffer("CPU_Mapped", BufferKind.MODEL, 5 * MIB),
            )
        ),
        device_free={"CUDA0": [1000 * MIB, 860 * MIB]},
    )
    # 1000 -> 500 MiB free after the first batch: 500 MiB left, 130 of them llama.cpp's.
    assert calibration.overheads_seen(info, {"CUDA0": 500 * MIB}) == {"CUDA0": 370 * MIB}
    assert calibration.overheads_seen(info, {}) == {}


def test_a_load_measures_the_overhead_and_the_next_plan_uses_it(
    models: dict[str, Path], rpc_servers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    server = rpc_servers()
    hardware = rpc_hardware(server)
    device = f"RPC0[{server.endpoint}]"
    choices = LoadChoices(n_gpu_layers=-1, n_ctx=512)
    before = plan_load(models["q4_k_m"], hardware, choices).plan
    assert not before.gpus[0].overhead_measured
    assert any("a default until a load measures it" in line for line in describe(before))

    with Engine(log_dir=tmp_path) as engine:
        outcome = load_model(engine, LoadRequest(str(models["q4_k_m"]), hardware, choices))
        assert device in outcome.info.device_free  # read before and after loading
        engine.chat([ChatMessage("user", "Hello")]).wait()
        assert device in engine.overheads
    version = calibration.installed_llama_version()
    assert calibration.measured_overheads(version) == {device: engine.overheads[device]}
    assert calibration.measured_overheads("0.0.1") == {}  # another build measures again

    after = plan_load(models["q4_k_m"], hardware, choices).plan
    assert after.gpus[0].overhead_measured
    assert after.gpus[0].overhead_bytes == engine.overheads[device]
    assert any("measured on this machine" in line for line in describe(after))
