"""The runtime overhead measured after a load, kept per device and version, used next time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine
from mixdesk.core.engine.protocol import Buffer, BufferKind, Buffers, ModelInfo
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import load_model
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest, plan_load
from mixdesk.core.machine.hardware import MIB
from mixdesk.core.planning import calibration
from mixdesk.core.planning.calibration import Calibration, CalibrationStore
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
    before = plan_load(
        resolve_file(models["q4_k_m"]), hardware, choices, calibration=Calibration()
    ).plan
    assert not before.gpus[0].overhead_measured
    assert any("a default until a load measures it" in line for line in describe(before))

    store = CalibrationStore(tmp_path / "calibration.json", "0.3.36")
    with Engine(log_dir=tmp_path) as engine:
        request = LoadRequest(resolve_file(models["q4_k_m"]), hardware, choices)
        outcome = load_model(engine, request, store=store)
        assert device in outcome.info.device_free  # read before and after loading
        engine.chat([ChatMessage("user", "Hello")]).wait()
        assert device in engine.overheads
    assert store.read().overheads == {device: engine.overheads[device]}
    other_build = CalibrationStore(store.path, "0.0.1")
    assert other_build.read().overheads == {}  # another build measures again

    after = plan_load(
        resolve_file(models["q4_k_m"]), hardware, choices, calibration=store.read()
    ).plan
    assert after.gpus[0].overhead_measured
    assert after.gpus[0].overhead_bytes == engine.overheads[device]
    assert any("measured on this machine" in line for line in describe(after))


def test_the_store_keeps_what_is_measured_and_survives_damage(tmp_path: Path) -> None:
    from mixdesk.core.planning.speed import SpeedSource
    from mixdesk.core.planning.speed_defaults import default_speed_model

    store = CalibrationStore(tmp_path / "calibration.json", "0.3.36")
    assert store.read() == Calibration()  # nothing yet
    store.path.write_text("{not json")
    assert store.read() == Calibration()  # a damaged file is nothing measured, never a crash
    store.path.write_text('{"0.3.36 CUDA0": 123, "0.3.36 bad": -1}')  # format 1
    assert store.read().overheads == {"CUDA0": 123}
    base = default_speed_model([], 2)
    memory_by_type = {"Q2_K": 1 / 12e9, "Q8_0": 1 / 40e9}
    model = replace(
        base, cpu=replace(base.cpu, memory_by_type=memory_by_type), prompt_token_s=17e-6
    )
    store.record_speed_model(model)
    back = store.read().speed
    assert back is not None and back.source is SpeedSource.MEASURED
    assert back.cpu == model.cpu and back.token_s == model.token_s
    assert back.prompt_token_s == 17e-6
    assert back.cpu.memory_by_type == memory_by_type
    assert store.read().overheads == {"CUDA0": 123}  # kept beside it
    store.record_answer("key", 12.5, 0.0)
    assert store.read().seen["key"].eval_tps == 12.5
    assert CalibrationStore(store.path, "9.9.9").read().speed is None  # per version


def test_an_answer_makes_its_setting_measured(models: dict[str, Path], tmp_path: Path) -> None:
    """After a real answer the plan of the same setting quotes what this machine did."""
    from mixdesk.core.engine import SamplingParams
    from mixdesk.core.loading.load import record_answer_speed
    from mixdesk.core.machine.hardware import GIB, HardwareInfo
    from mixdesk.core.planning.speed import SpeedSource

    cpu = HardwareInfo(4 * GIB, 4 * GIB, physical_cores=2, logical_cores=2)
    store = CalibrationStore(tmp_path / "calibration.json", "0.3.36")
    choices = LoadChoices(n_ctx=512, n_threads=2)
    before = plan_load(resolve_file(models["q4_k_m"]), cpu, choices, calibration=store.read()).plan
    assert before.speed is not None and before.speed.source is SpeedSource.ESTIMATE
    with Engine(log_dir=tmp_path) as engine:
        request = LoadRequest(
            resolve_file(models["q4_k_m"]), cpu, choices, calibration=store.read()
        )
        outcome = load_model(engine, request, store=store)
        done = engine.chat([ChatMessage("user", "Hello")], SamplingParams(max_tokens=4)).wait()
        assert not record_answer_speed(store, outcome, done.stats)  # too short to say
        sampling = SamplingParams(max_tokens=24, ignore_eos=True, seed=1)
        done = engine.chat([ChatMessage("user", "Hello")], sampling).wait()
        assert record_answer_speed(store, outcome, done.stats)
    after = plan_load(resolve_file(models["q4_k_m"]), cpu, choices, calibration=store.read()).plan
    assert after.speed is not None and after.speed.source is SpeedSource.MEASURED
    assert after.speed.eval_tps == pytest.approx(done.stats.eval_tps, rel=0.01)
    other = plan_load(
        resolve_file(models["q4_k_m"]), cpu, replace(choices, n_threads=1), calibration=store.read()
    )
    assert other.plan.speed is not None and other.plan.speed.source is SpeedSource.ESTIMATE
