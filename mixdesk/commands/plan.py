"""``mixdesk plan MODEL`` and ``mixdesk hw``: what fits where, before loading or downloading."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from typing import Any

from mixdesk.commands.common import calibration_store, load_choices, machine, print_json
from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.remote_header import parse_model_ref, profile_remote
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_model
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine import hardware
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import STRATEGIES, OffloadPlan
from mixdesk.core.planning.words import FIT_WORDS, explain, speed_short
from mixdesk.errors import ModelNotFoundError


def plan_to_json(plan: OffloadPlan, *, model: str) -> dict[str, Any]:
    """The plan as plain data (``mixdesk plan --json``)."""
    return {
        "model": model,
        "n_gpu_layers": plan.n_gpu_layers,
        "n_layers": plan.n_layers,
        "n_ctx": plan.n_ctx,
        "ctx_reduced_from": plan.ctx_reduced_from,
        "fit": plan.fit,
        "shortfall_bytes": plan.shortfall_bytes,
        "expected_tps": plan.speed.eval_tps if plan.speed else None,
        "expected_prompt_tps": plan.speed.prompt_tps if plan.speed else None,
        "speed_source": plan.speed.source.name.lower() if plan.speed else None,
        "speed_error": plan.speed.error if plan.speed else None,
        "flash_attn": plan.flash_attn,
        "type_k": plan.type_k,
        "type_v": plan.type_v,
        "op_offload": plan.op_offload,
        "strategy": plan.strategy,
        "experts_in_ram": plan.experts_in_ram,
        "experts_order": plan.experts_order,
        "cpu_tensors": list(plan.cpu_tensors),
        "partial_layer": asdict(plan.partial_layer) if plan.partial_layer else None,
        "placement": plan.placement_words,
        "tensor_split": list(plan.tensor_split),
        "compute_measured": plan.compute_measured,
        "devices": [{**asdict(d), "used_bytes": d.used_bytes} for d in plan.devices],
        "explanation": explain(plan),
    }


def plan_table(plan: OffloadPlan) -> str:
    """A per-device table of the plan."""
    head = f"{'device':<34}{'weights':>11}{'KV cache':>11}{'compute':>11}{'overhead':>11}{'margin':>11}{'total':>11}{'free':>11}"
    rows = [head]
    for d in plan.devices:
        cells = (
            d.weights_bytes,
            d.kv_bytes,
            d.compute_bytes,
            d.overhead_bytes,
            d.margin_bytes,
            d.used_bytes,
            d.free_bytes,
        )
        rows.append(f"{d.name[:33]:<34}" + "".join(f"{format_bytes(c):>11}" for c in cells))
    return "\n".join(rows)


def strategies_text(
    profile: ModelProfile, hw: HardwareInfo, choices: LoadChoices, calibration: Calibration
) -> str:
    """Both ways to place a mixture-of-experts model, side by side, with their bytes; "" when
    they place it alike (it all fits on the GPU, or there is no GPU): no heading over rows
    that offer no choice."""
    plans = {
        strategy: make_plan(
            profile,
            hw,
            replace(choices, strategy=strategy, n_gpu_layers=None),
            calibration=calibration,
        )
        for strategy in STRATEGIES
    }
    if len({plan.placement_words for plan in plans.values()}) < 2:
        return ""
    rows = ["Strategies (--strategy):"]
    for strategy, plan in plans.items():
        gpu = sum(d.used_bytes for d in plan.gpus)
        rows.append(
            f"  {strategy:<8} {plan.placement_words}: {format_bytes(gpu)} on GPU, "
            f"{format_bytes(plan.cpu.used_bytes)} in RAM, {speed_short(plan.speed)}"
        )
    rows.append(
        "  Mixtral reads about as many expert bytes per token either way: expect little "
        "generation gain from experts in RAM, more for long prompts (op offload; "
        "--experts-from first|last picks whose experts stay in RAM)."
    )
    return "\n".join(rows)


def model_profile(text: str, *, library: Library) -> tuple[str, ModelProfile]:
    """What ``mixdesk plan`` plans: a local file or library model (resolved and checked once),
    else a file on the Hub (``OWNER/REPO/FILE.gguf``, read from its header alone).

    Returns:
        The model's name for the output (the path, or the Hub file) and its profile.

    Raises:
        InvalidArgumentError: neither a local model nor a Hub file name.
    """
    try:
        model = resolve_model(text, library=library)
    except ModelNotFoundError:
        ref = parse_model_ref(text)  # a Hub file, or one sentence saying it is neither
        return str(ref), profile_remote(ref)
    return str(model.path), profile_local(model.path)


def run_plan(args: argparse.Namespace, *, library: Library) -> int:
    """Run the plan command."""
    name, profile = model_profile(args.model, library=library)
    hw = machine(args)
    calibration = calibration_store().read()
    plan = make_plan(profile, hw, load_choices(args), calibration=calibration)
    if args.json:
        data = plan_to_json(plan, model=name)
        data["profile"] = {
            "name": profile.name,
            "architecture": profile.architecture,
            "n_layers": profile.n_layers,
            "n_expert": profile.n_expert,
            "n_expert_used": profile.n_expert_used,
            "weights_bytes": profile.weights_bytes,
            "files": list(profile.files),
            "legacy_expert_layout": profile.legacy_expert_layout,
            "header_bytes_read": profile.header_bytes_read,
        }
        print_json(data)
        return 0
    experts = (
        f", {profile.n_expert} experts ({profile.n_expert_used} used)" if profile.is_moe else ""
    )
    out = sys.stdout
    out.write(
        f"{profile.name}: {profile.architecture}, {profile.n_layers} layers{experts}, "
        f"{format_bytes(profile.weights_bytes)} of weights"
    )
    out.write(f" in {len(profile.files)} files\n" if len(profile.files) > 1 else "\n")
    out.write(
        f"Plan: --ngl {plan.n_gpu_layers} ({plan.placement_words}; {FIT_WORDS[plan.fit]}), "
        f"context {plan.n_ctx}, "
        f"KV cache {plan.type_k}{', flash attention' if plan.flash_attn else ''}\n\n"
    )
    out.write(plan_table(plan) + "\n\n")
    for line in explain(plan):
        out.write(f"- {line}\n")
    if profile.legacy_expert_layout:
        out.write(
            "- This file uses the old per-expert Mixtral layout, which current llama.cpp no longer "
            "loads: `mixdesk pull` converts it while downloading; for a file you already have, "
            "`mixdesk import FILE` or `mixdesk convert IN OUT`.\n"
        )
    choices = load_choices(args)
    strategies = strategies_text(profile, hw, choices, calibration) if profile.is_moe else ""
    if strategies:
        out.write("\n" + strategies + "\n")
    return 0


def run_hw(args: argparse.Namespace) -> int:
    """Run the hw command."""
    hw = machine(args)
    backends = hardware.llama_gpu_backends()
    if args.json:
        print_json({**asdict(hw), "llama_cpp_gpu_backends": backends})
        return 0
    out = sys.stdout
    note = f" (overridden: {', '.join(hw.overridden)})" if hw.overridden else ""
    out.write(
        f"RAM: {format_bytes(hw.ram_available_bytes)} available of {format_bytes(hw.ram_total_bytes)}{note}\n"
    )
    out.write(f"CPU: {hw.physical_cores} physical cores, {hw.logical_cores} threads\n")
    if not hw.gpus:
        out.write("GPU: none found\n")
    for gpu in hw.gpus:
        out.write(
            f"GPU {gpu.index}: {gpu.name} ({gpu.backend}), {format_bytes(gpu.free_bytes)} free of "
            f"{format_bytes(gpu.total_bytes)}\n"
        )
    out.write(
        f"llama.cpp build: {'GPU (' + ', '.join(backends) + ')' if backends else 'CPU only'}\n"
    )
    return 0
