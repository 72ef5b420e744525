"""The speed of a plan: the speed model's prediction for its placement, with defaults for
any device calibration did not measure, and the faster of two plans (which layers' experts
go to RAM is chosen so)."""

from __future__ import annotations

from dataclasses import replace

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import GpuInfo
from mixdesk.core.planning.speed import (
    Speed,
    SpeedModel,
    SpeedSource,
    predict,
)
from mixdesk.core.planning.speed_defaults import default_speed_model
from mixdesk.core.planning.types import OffloadPlan


def with_defaults(
    measured: SpeedModel | None,
    names: list[tuple[str, GpuInfo]],
    threads: int,
    used: set[str],
) -> SpeedModel:
    """The measured coefficients, with defaults for any offload device not measured; the
    speed is then an estimate if the plan uses such a device."""
    defaults = default_speed_model(names, threads)
    if measured is None:
        return defaults
    missing = used - set(measured.devices)
    if not missing:
        return measured
    devices = {**defaults.devices, **measured.devices}
    return replace(
        measured,
        devices=devices,
        source=SpeedSource.ESTIMATE,
        error=max(measured.error, defaults.error),
    )


def plan_speed(
    model: SpeedModel,
    profile: ModelProfile,
    plan: OffloadPlan,
    names: list[tuple[str, GpuInfo]],
    threads: int,
) -> Speed:
    """The speed model's prediction for the plan's placement (``names``: the offload
    devices' llama.cpp names, in its order)."""
    n = profile.n_layers
    layer_device: dict[int, str] = {}
    first = n - plan.repeating_layers_on_gpu
    by_name = {d.buffer_name: d for d in plan.gpus}
    layer = first
    output_device = "CPU"
    for name, _gpu in names:
        device = by_name.get(name)
        if device is None:
            continue
        for i in range(layer, layer + device.layers):
            layer_device[i] = name
        layer += device.layers
        if device.output:
            output_device = name
    return predict(
        model,
        profile,
        layer_device=layer_device,
        output_device=output_device,
        cpu_tensors=plan.cpu_tensors,
        threads=threads,
        op_offload=plan.op_offload,
    )


#: Speeds closer than this share are a tie.
_TIE = 0.005


def faster(plans: list[OffloadPlan]) -> OffloadPlan:
    """The fastest plan, with the other's speed in its facts: the faster generation, or at
    about the same generation (within :data:`_TIE`) the faster prompts; the first plan on a
    tie. A plan that does not fit has no speed and loses."""
    best = plans[0]
    for plan in plans[1:]:
        if _beats(plan.speed, best.speed):
            best = plan
    other = next((p for p in plans if p is not best), best)
    return replace(best, facts=replace(best.facts, other_order_speed=other.speed))


def _beats(speed: Speed | None, other: Speed | None) -> bool:
    if speed is None or other is None:
        return other is None and speed is not None
    if abs(speed.eval_tps - other.eval_tps) > _TIE * other.eval_tps:
        return speed.eval_tps > other.eval_tps
    return speed.prompt_tps > other.prompt_tps * (1 + _TIE)
