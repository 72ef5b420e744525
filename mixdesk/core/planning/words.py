"""A plan's verdict in words: one vocabulary for the Models tab's badges, the first-run page
and ``mixdesk plan`` (the plan itself is data: :class:`~mixdesk.core.planning.planner.OffloadPlan`)."""

from __future__ import annotations

from mixdesk.core.machine.hardware import format_bytes, format_rate
from mixdesk.core.planning.speed import PROMPT_TOKENS, Speed, SpeedSource
from mixdesk.core.planning.types import DevicePlan, Fit, OffloadPlan, experts_phrase

#: What each verdict means, in a few words.
FIT_WORDS: dict[Fit, str] = {
    Fit.FULL: "everything on the GPU",
    Fit.PARTIAL: "partial offload",
    Fit.EXPERTS: "experts in RAM, the rest on the GPU",
    Fit.CPU: "CPU only",
    Fit.NONE: "too big for this machine",
}


def fit_badge(plan: OffloadPlan) -> str:
    """The fit of a plan in a few words (the Models tab's column)."""
    match plan.fit:
        case Fit.FULL:
            return f"all {plan.n_layers} layers on GPU"
        case Fit.PARTIAL:
            return f"{plan.repeating_layers_on_gpu}/{plan.n_layers} layers on GPU"
        case Fit.EXPERTS:
            return f"all layers on GPU, {experts_phrase(plan)} in RAM"
        case Fit.CPU | Fit.NONE:
            return FIT_WORDS[plan.fit]


def verdict(plan: OffloadPlan | None, problem: str = "") -> str:
    """The planner's verdict in its own words, with the expected speed (the first-run page)."""
    if plan is None:
        return f"unknown ({problem})" if problem else "unknown"
    speed = speed_short(plan.speed)
    match plan.fit:
        case Fit.NONE:
            return FIT_WORDS[Fit.NONE]
        case Fit.CPU:
            return f"CPU only ({plan.placement_words}), {speed}"
        case Fit.FULL | Fit.PARTIAL | Fit.EXPERTS:
            return f"{plan.placement_words}, {speed}"


def _tps(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def speed_short(speed: Speed | None) -> str:
    """The generation speed in a few words that say what it is ("about 7.3 tok/s, estimate")."""
    if speed is None:
        return "no speed: it does not fit"
    if speed.source is SpeedSource.MEASURED:
        return f"{_tps(speed.eval_tps)} tok/s, measured on this machine"
    return f"about {_tps(speed.eval_tps)} tok/s, estimate"


def speed_words(plan: OffloadPlan) -> str:
    """The expected speeds, said as what they are: measured or estimated, and how close."""
    speed = plan.speed
    if speed is None:
        return "No speed is given for a setting that does not fit."
    what = (
        "measured on this machine"
        if speed.source is SpeedSource.MEASURED
        else "an estimate until `mixdesk calibrate` measures this machine"
    )
    long_prompt = min(plan.n_ctx // 2, 4096)
    return (
        f"Expected speed {_tps(speed.eval_tps)} tokens/s generating, {_tps(speed.prompt_tps)} "
        f"tokens/s reading a {PROMPT_TOKENS}-token prompt ({what}; within about "
        f"{speed.error:.0%}); a {long_prompt:,}-token conversation waits about "
        f"{_seconds(speed.ttft_s(long_prompt))} for its first word."
    )


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
    return f"{value / 60:.1f} min"


def explain(plan: OffloadPlan) -> list[str]:
    """Why the plan is what it is, line by line, ending with its expected speed."""
    return [*describe(plan), speed_words(plan)]


def describe(plan: OffloadPlan) -> list[str]:
    """Why the plan is what it is, line by line (without the speed): the one place the
    plan's numbers become sentences, for the CLI, the offload panel and the load summary."""
    facts, n = plan.facts, plan.n_layers
    lines: list[str] = []
    if facts.unused_gpu:
        lines.append(
            f"{facts.unused_gpu} is not used: this llama.cpp build is CPU-only (see `mixdesk doctor`)."
        )
    where = facts.best_device if len(plan.gpus) <= 1 else f"{len(plan.gpus)} devices"
    if not facts.best_device:
        lines.append(
            f"No usable GPU: all {n} layers ({format_bytes(facts.model_bytes)}) run from CPU RAM."
        )
    elif plan.fit is Fit.FULL:
        used = sum(d.used_bytes for d in plan.gpus)
        free = sum(d.free_bytes for d in plan.gpus)
        lines.append(
            f"All {n} layers and the output layer fit on {where}: {format_bytes(used)} "
            f"of {format_bytes(free)} free VRAM, margin included."
        )
    elif plan.cpu_tensors:
        lines += _experts_words(plan, where)
    elif plan.n_gpu_layers > 0:
        layers = plan.repeating_layers_on_gpu
        rest = (
            f"the other {n - layers} layers stay in CPU RAM"
            if layers < n
            else "no layer stays in CPU RAM"
        )
        lines.append(
            f"n_gpu_layers {plan.n_gpu_layers}: the output layer and {layers} of {n} layers "
            f"({format_bytes(facts.layer_bytes)} each) go on {where}; {rest}."
        )
        if facts.one_more_layer_short_bytes:
            lines.append(
                f"One more layer would need {format_bytes(facts.one_more_layer_short_bytes)} "
                "more VRAM than is free."
            )
    elif not facts.layers_fixed:
        lines.append(
            f"Not even one layer fits in the {format_bytes(facts.best_device_free_bytes)} free "
            f"on {facts.best_device}: CPU only."
        )
    lines += [_overhead_words(d) for d in plan.gpus if d.layers or d.output]
    if len(plan.gpus) > 1:
        shares = "; ".join(
            f"{d.name}: {d.layers} layers{' + output' if d.output else ''}, {format_bytes(d.used_bytes)}"
            for d in plan.gpus
        )
        lines.append(f"Split over {len(plan.gpus)} devices in llama.cpp's order ({shares}).")
    if plan.ctx_reduced_from:
        lines.append(
            f"The context was reduced from {plan.ctx_reduced_from} to {plan.n_ctx} tokens to fit "
            "more layers; set a context length to keep it."
        )
    if plan.fit is Fit.NONE:
        lines.append(
            f"This will not fit: {format_bytes(plan.shortfall_bytes)} more memory is needed "
            "than is available."
        )
    lines += _network_words(plan)
    if facts.kept_ctx_over:
        lines.append(
            f"Context {plan.n_ctx} tokens kept rather than one more layer at "
            f"{facts.kept_ctx_over}: with flash attention and a {plan.type_k} KV cache it costs "
            "little, and long conversations need the room."
        )
    return lines


def _experts_words(plan: OffloadPlan, where: str) -> list[str]:
    """Which expert tensors stay in RAM, and why those."""
    k, partial = plan.experts_in_ram, plan.partial_layer
    same_as = (
        f" (llama.cpp's --n-cpu-moe {k})" if plan.experts_order == "first" and not partial else ""
    )
    lines = [
        f"All {plan.n_layers} layers and the output layer go on {where}; "
        f"{experts_phrase(plan)} ({format_bytes(plan.facts.experts_ram_bytes)}) stay in CPU "
        f"RAM{same_as}."
    ]
    if partial is not None:
        lines.append(
            f"Layer {partial.layer} keeps its attention and {partial.of - partial.in_ram} of its "
            f"{partial.of} expert tensors on {where}, so the GPU is filled to its margin, as "
            "llama.cpp's fit does."
        )
    if plan.facts.experts_order_fixed:
        return lines
    other = "first" if plan.experts_order == "last" else "last"
    lines.append(
        f"The {plan.experts_order} layers' experts go to RAM rather than the {other} layers': "
        f"{_order_gain_words(plan.speed, plan.facts.other_order_speed)} (Measure compares "
        "both; --experts-from sets it)."
    )
    return lines


def _order_gain_words(chosen: Speed | None, other: Speed | None) -> str:
    """What the speed model expects of the chosen order of experts in RAM over the other."""
    if chosen is None or other is None or other.prompt_tps <= 0 or other.eval_tps <= 0:
        return "the speed model could not compare them"
    prompt = chosen.prompt_tps / other.prompt_tps - 1
    generation = chosen.eval_tps / other.eval_tps - 1
    if max(abs(prompt), abs(generation)) < 0.005:
        return "the speed model expects no difference here"
    said = "about the same" if abs(generation) < 0.005 else f"{generation:+.0%}"
    return f"the speed model expects prompts read {prompt:.0%} faster that way, generation {said}"


def _overhead_words(d: DevicePlan) -> str:
    how = (
        "measured on this machine" if d.overhead_measured else "a default until a load measures it"
    )
    return f"Runtime overhead on {d.name}: {format_bytes(d.overhead_bytes)} ({how})."


def _network_words(plan: OffloadPlan) -> list[str]:
    """What loading sends to each worker, and what answering costs on the network."""
    lines = []
    for d in plan.gpus:
        if not d.endpoint:
            continue
        estimate = (
            f"about {d.send_seconds:.1f} s at the {format_rate(d.link_bytes_per_s)} measured"
            if d.send_seconds is not None
            else "link speed not measured"
        )
        cache = (
            f"; it keeps tensors over 10 MiB in its cache (up to {format_bytes(d.cache_bytes)}), "
            "so loading this model again sends only their hashes"
            if d.cache_bytes
            else "; it keeps no cache, so every load sends all of it"
        )
        lines.append(
            f"Loading sends {format_bytes(d.send_bytes)} of weights to the worker at "
            f"{d.endpoint} ({estimate}){cache}."
        )
    if lines:
        lines.append(
            "While answering, only activations and llama.cpp's commands cross the network "
            "(kilobytes per token), so a worker's link speed matters for loading, hardly for "
            "answering; its latency adds a little to every token."
        )
    return lines
