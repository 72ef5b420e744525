"""A plan's verdict in words: one vocabulary for the Models tab's badges, the first-run page
and ``mixdesk plan`` (the plan itself is data: :class:`~mixdesk.core.planning.planner.OffloadPlan`)."""

from __future__ import annotations

from mixdesk.core.planning.types import Fit, OffloadPlan

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
            return f"all layers on GPU, experts of {plan.experts_in_ram} in RAM"
        case Fit.CPU | Fit.NONE:
            return FIT_WORDS[plan.fit]


def verdict(plan: OffloadPlan | None, problem: str = "") -> str:
    """The planner's verdict in its own words, with the expected speed (the first-run page)."""
    if plan is None:
        return f"unknown ({problem})" if problem else "unknown"
    speed = f"about {plan.expected_tps:g} tok/s"
    match plan.fit:
        case Fit.NONE:
            return FIT_WORDS[Fit.NONE]
        case Fit.CPU:
            return f"CPU only ({plan.placement_words}), {speed}"
        case Fit.FULL | Fit.PARTIAL | Fit.EXPERTS:
            return f"{plan.placement_words}, {speed}"


def speed_words(plan: OffloadPlan) -> str:
    """The expected speed, said as what it is."""
    return (
        f"Expected speed about {plan.expected_tps:g} tokens/s (an estimate from memory bandwidth)."
    )


def explain(plan: OffloadPlan) -> list[str]:
    """Why the plan is what it is, line by line, ending with its expected speed."""
    return [*plan.explanation, speed_words(plan)]
