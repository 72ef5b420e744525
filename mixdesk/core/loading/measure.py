"""Measure: what is worth measuring on this machine, starting from the user's choices as planned."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.planning.types import OffloadPlan, Strategy


@dataclass(frozen=True)
class MeasureVariant:
    """One setting to measure: a label the user reads and the choices that load it."""

    label: str
    choices: LoadChoices


def measure_variants(
    choices: LoadChoices, plan: OffloadPlan, profile: ModelProfile, hardware: HardwareInfo
) -> list[MeasureVariant]:
    """What is worth measuring on this machine, starting from ``choices`` as planned.

    Fewer GPU layers is always slower (and a reload of tens of GB per try), so it is never
    measured; what really varies between machines is: experts in RAM instead of whole layers
    (for a mixture of experts), op offload, flash attention and the thread count.
    """
    base = replace(choices, n_gpu_layers=plan.n_gpu_layers if plan.strategy == "layers" else None)
    found = [MeasureVariant("as planned", base)]
    if plan.gpus and profile.is_moe:
        other: Strategy = "layers" if plan.strategy == "experts" else "experts"
        words = "whole layers" if other == "layers" else "experts in RAM"
        found.append(MeasureVariant(words, replace(base, strategy=other, n_gpu_layers=None)))
    if plan.gpus and plan.n_gpu_layers > 0:
        op = not plan.op_offload
        found.append(
            MeasureVariant(f"op offload {'on' if op else 'off'}", replace(base, op_offload=op))
        )
    fa = not plan.flash_attn
    if plan.type_v == "f16" or fa:  # a quantised V cache needs flash attention
        found.append(
            MeasureVariant(f"flash attention {'on' if fa else 'off'}", replace(base, flash_attn=fa))
        )
    threads = choices.n_threads or hardware.physical_cores
    if threads > 1:
        fewer = max(1, threads // 2)
        found.append(MeasureVariant(f"{fewer} threads", replace(base, n_threads=fewer)))
    return found
