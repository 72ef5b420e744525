"""Layer placement as the installed llama.cpp does it, checked on a real offload device.

Every build here is CPU-only, so llama.cpp would skip layer placement entirely; a loopback
RPC server (llama.cpp's own RPC backend, over the CPU) is a real offload device: llama.cpp
assigns layers to it, allocates its buffers there and logs their sizes per device. These
tests compare the planner's per-device figures with those logs for every ``n_gpu_layers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine
from mixdesk.core.engine.protocol import BufferKind, ModelInfo
from mixdesk.core.gguf.convert import convert_legacy
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.gguf.synthetic import write_model
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadSetup, plan_load
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.experts import expert_tensors, in_ram
from mixdesk.core.planning.types import ExpertsOrder, PartialLayer
from tests.helpers import model_factory as mf
from tests.helpers.devices import mismatches, rpc_hardware
from tests.helpers.mixdesk_workers import WorkerProcess

Servers = Callable[[], WorkerProcess]

#: n_embd 768 (not a multiple of 512), 5 layers, 6 heads: a second Mixtral-like shape.
WIDE = mf.with_changes(
    mf.TINY, n_embd=768, n_ff=1024, n_layers=5, n_head=6, n_head_kv=2, name="Mixtral wide test"
)


@pytest.fixture(scope="session")
def truth_models(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> dict[str, Path]:
    """Two shapes, Q4_K_M and Q2_K, a legacy file converted to the merged layout, a split file."""
    d = tmp_path_factory.mktemp("truth")
    legacy = mf.make_model(d, mf.with_changes(mf.TINY, legacy_expert_layout=True), "Q4_K_M")
    converted = d / "legacy-converted.Q4_K_M.gguf"
    convert_legacy(legacy, converted)
    return {
        "tiny-q4_k_m": models["q4_k_m"],
        "wide-q2_k": mf.make_model(d, WIDE, "Q2_K", name="wide"),
        "legacy-converted-q4_k_m": converted,
        "split-f32": write_model(d / "split.gguf", mf.TINY, split_parts=2),
    }


def load_and_compare(
    engine: Engine, model: Path, hardware: HardwareInfo, n_gpu_layers: int, *, n_ctx: int = 1024
) -> tuple[LoadSetup, ModelInfo, list[str]]:
    choices = LoadChoices(n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, use_mmap=False)
    setup = plan_load(
        resolve_file(model), hardware, choices, engine=engine, calibration=Calibration()
    )
    info = engine.load(setup.config)
    return setup, info, mismatches(setup, info)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["tiny-q4_k_m", "wide-q2_k", "legacy-converted-q4_k_m", "split-f32"]
)
def test_every_layer_count_on_one_device(
    name: str, truth_models: dict[str, Path], rpc_servers: Servers, tmp_path: Path
) -> None:
    model = truth_models[name]
    hardware = rpc_hardware(rpc_servers())
    n = profile_local(model).n_layers
    problems: list[str] = []
    with Engine(log_dir=tmp_path / "logs") as engine:
        for ngl in range(n + 2):
            setup, _info, found = load_and_compare(engine, model, hardware, ngl)
            problems += [f"{name} n_gpu_layers={ngl}: {p}" for p in found]
            if ngl > 0:  # the output layer always goes first
                device = setup.plan.gpus[0]
                assert device.output and device.layers == min(ngl - 1, n)
    assert not problems, "\n".join(problems)


def test_n_gpu_layers_2_is_the_output_and_the_last_layer(
    models: dict[str, Path], rpc_servers: Servers, engine: Engine
) -> None:
    """What llama.cpp 0.3.36 does with --ngl 2: layer 3 and the output layer on the device.

    (The 2023 rule, which the planner followed before, put layers 2 and 3 there.)
    """
    server = rpc_servers()
    setup, info, found = load_and_compare(engine, models["q4_k_m"], rpc_hardware(server), 2)
    device = setup.plan.gpus[0]
    assert (device.layers, device.output) == (1, True)
    assert setup.plan.placement_words == "1 of 4 layers + output on GPU"
    profile = setup.profile
    assert (
        device.weights_bytes
        == profile.layer_bytes[-1] + profile.output_bytes + profile.output_norm_bytes
    )
    assert not found, found
    assert (
        info.buffers.get(f"RPC0[{server.endpoint}]", BufferKind.KV) == setup.plan.gpus[0].kv_bytes
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "ngl"), [("tiny-q4_k_m", 5), ("wide-q2_k", 6), ("wide-q2_k", 4), ("split-f32", 5)]
)
def test_two_devices_split_as_planned(
    name: str, ngl: int, truth_models: dict[str, Path], rpc_servers: Servers, tmp_path: Path
) -> None:
    """Two RPC devices: the planner's split goes to llama.cpp as tensor_split, and every
    device holds what the plan says. The devices have 3 and 1 GiB free, so the planner's
    split (in proportion to their room) is not llama.cpp's even default for two servers."""
    model = truth_models[name]
    first, second = rpc_servers(), rpc_servers()
    hardware = rpc_hardware(first, second)
    hardware.gpus[1] = GpuInfo("RPC test device 1", "rpc", GIB, GIB, endpoint=second.endpoint)
    hardware.gpus[0] = GpuInfo(
        "RPC test device 0", "rpc", 3 * GIB, 3 * GIB, endpoint=first.endpoint
    )
    with Engine(log_dir=tmp_path / "logs") as engine:
        setup, _info, found = load_and_compare(engine, model, hardware, ngl)
    assert len(setup.plan.gpus) == 2 and all(d.layers or d.output for d in setup.plan.gpus)
    assert setup.config.tensor_split == tuple(float(c) for c in setup.plan.tensor_split)
    assert sum(setup.plan.tensor_split) == ngl
    assert setup.plan.gpus[1].output  # the output layer is the last slot: the last device
    assert not found, "\n".join(found)


@pytest.mark.parametrize("experts_in_ram", [1, 3])
def test_experts_in_ram_land_where_planned(
    experts_in_ram: int, models: dict[str, Path], rpc_servers: Servers, tmp_path: Path
) -> None:
    """The "experts" strategy: every layer and the output on the device, the expert tensors
    of the first K layers in CPU buffers (tensor buffer overrides), sizes as planned."""
    server = rpc_servers()
    choices = LoadChoices(
        n_ctx=1024, use_mmap=False, strategy="experts", experts_in_ram=experts_in_ram
    )
    with Engine(log_dir=tmp_path / "logs") as engine:
        setup = plan_load(
            resolve_file(models["q4_k_m"]),
            rpc_hardware(server),
            choices,
            engine=engine,
            calibration=Calibration(),
        )
        info = engine.load(setup.config)
        assert engine.chat([ChatMessage("user", "Hi")]).wait().stats.eval_tokens > 0
    profile = setup.profile
    assert setup.config.n_gpu_layers == profile.n_layers + 1
    assert {int(name.split(".")[1]) for name in setup.config.cpu_tensors} == set(
        range(experts_in_ram)
    )
    cpu, device = setup.plan.cpu, setup.plan.gpus[0]
    assert cpu.weights_bytes == profile.token_embd_bytes + sum(
        profile.layer_expert_bytes[:experts_in_ram]
    )
    assert device.weights_bytes == profile.weights_bytes - cpu.weights_bytes
    found = mismatches(setup, info)
    assert not found, "\n".join(found)
    assert setup.plan.experts_in_ram == experts_in_ram and setup.plan.partial_layer is None
    assert setup.plan.placement_words.endswith(
        "experts of layer 0 in RAM" if experts_in_ram == 1 else "experts of layers 0-2 in RAM"
    )


@pytest.mark.parametrize("order", ["first", "last"])
def test_a_partial_layer_of_experts_lands_where_planned(
    order: ExpertsOrder, oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    """Tensor by tensor: five expert tensors in RAM are one layer's three and the down and
    gate experts of the next (its attention and up experts stay on the device), from either
    end of the model; llama.cpp allocates on every device what the plan says."""
    server = rpc_servers()
    choices = LoadChoices(
        n_ctx=1024,
        use_mmap=False,
        strategy="experts",
        expert_tensors_in_ram=5,
        experts_from=order,
    )
    with Engine(log_dir=tmp_path / "logs") as engine:
        setup = plan_load(
            resolve_file(oom_model),
            rpc_hardware(server),
            choices,
            engine=engine,
            calibration=Calibration(),
        )
        info = engine.load(setup.config)
        assert engine.chat([ChatMessage("user", "Hi")]).wait().stats.eval_tokens > 0
    plan, n = setup.plan, setup.profile.n_layers
    whole, boundary = (0, 1) if order == "first" else (n - 1, n - 2)
    assert plan.experts_in_ram == 1 and plan.partial_layer == PartialLayer(boundary, 2, 3)
    assert set(setup.config.cpu_tensors) == {
        *(f"blk.{whole}.ffn_{kind}_exps.weight" for kind in ("down", "gate", "up")),
        f"blk.{boundary}.ffn_down_exps.weight",
        f"blk.{boundary}.ffn_gate_exps.weight",
    }
    in_ram = sum(t.nbytes for t in expert_tensors(setup.profile) if t.name in plan.cpu_tensors)
    assert plan.cpu.weights_bytes == setup.profile.token_embd_bytes + in_ram
    found = mismatches(setup, info)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("order", ["first", "last"])
def test_experts_fill_the_device_to_its_margin(
    order: ExpertsOrder, oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    """A device with room for all but four and a half expert tensors (by llama.cpp's own
    compute buffers) gets all but five: the boundary layer keeps one on the device, and what
    llama.cpp allocates is what the plan says."""
    server = rpc_servers()
    pinned = LoadChoices(
        n_ctx=1024, use_mmap=False, strategy="experts", expert_tensors_in_ram=5, experts_from=order
    )
    with Engine(log_dir=tmp_path / "logs") as engine:
        probe = plan_load(
            resolve_file(oom_model),
            rpc_hardware(server),
            pinned,
            engine=engine,
            calibration=Calibration(),
        )
        sixth = in_ram(probe.profile, order, 6).tensors[-1].nbytes
        device = probe.plan.gpus[0]
        hardware = rpc_hardware(server, free=device.used_bytes + sixth // 2)
        auto = replace(pinned, expert_tensors_in_ram=None)
        setup = plan_load(
            resolve_file(oom_model), hardware, auto, engine=engine, calibration=Calibration()
        )
        info = engine.load(setup.config)
    plan = setup.plan
    assert plan.cpu_tensors == probe.plan.cpu_tensors and plan.partial_layer is not None
    assert plan.gpus[0].used_bytes <= plan.gpus[0].free_bytes < device.used_bytes + sixth
    found = mismatches(setup, info)
    assert not found, "\n".join(found)
