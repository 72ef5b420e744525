"""Measure: which setting really is fastest on this machine, beyond the noise.

As llama-bench does: a fixed prompt, then a fixed number of generated tokens (end-of-text
ignored), llama.cpp's own eval counter; every variant in :data:`ROUNDS` interleaved rounds
(variant A, B, C, A, B, C, ...: a busy moment hits them alike), the median and the spread
(fastest minus slowest round) of each. A variant wins only when its median beats the current
setting's by more than both spreads; otherwise there is "no difference beyond noise", and Keep
fastest keeps what is loaded.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.like import EngineLike
from mixdesk.core.engine.protocol import SamplingParams
from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import LoadOutcome, load_model
from mixdesk.core.loading.service import LoadRequest, pin_experts
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.planning.types import ExpertsOrder, OffloadPlan, Strategy
from mixdesk.errors import DeviceOutOfMemoryCrashError, DeviceOutOfMemoryError

#: Rounds per variant, and tokens generated per round (end-of-text ignored).
ROUNDS = 3
TOKENS = 64
#: The prompt every round answers (short: the generation speed is measured).
PROMPT = "Write a few sentences about the sea."


@dataclass(frozen=True)
class MeasureVariant:
    """One setting to measure: a label the user reads and the choices that load it."""

    label: str
    choices: LoadChoices


@dataclass(frozen=True)
class VariantResult:
    """A variant's eval tok/s, one figure per round (an empty tuple: it did not load)."""

    variant: MeasureVariant
    rounds: tuple[float, ...] = ()
    #: It ran out of GPU memory (more layers than fit): never a winner.
    did_not_fit: bool = False

    @property
    def median(self) -> float:
        """The median of its rounds (0 when it has none)."""
        return statistics.median(self.rounds) if self.rounds else 0.0

    @property
    def spread(self) -> float:
        """Its fastest round less its slowest."""
        return max(self.rounds) - min(self.rounds) if self.rounds else 0.0


@dataclass(frozen=True)
class MeasureReport:
    """Every variant's rounds so far; the first variant is the current setting."""

    results: tuple[VariantResult, ...] = ()
    rounds_done: int = 0
    rounds: int = ROUNDS

    @property
    def finished(self) -> bool:
        """Every round of every variant is in."""
        return self.rounds_done >= self.rounds

    def winner(self) -> VariantResult | None:
        """The fastest variant that beats the current setting by more than the noise (the
        spreads of both), or None: no difference beyond noise."""
        if not self.results or not self.finished:
            return None
        current = self.results[0]
        beating = [
            r
            for r in self.results[1:]
            if not r.did_not_fit
            and len(r.rounds) >= self.rounds
            and r.median - current.median > max(r.spread, current.spread)
        ]
        return max(beating, key=lambda r: r.median) if beating else None


def measure_variants(
    choices: LoadChoices, plan: OffloadPlan, profile: ModelProfile, hardware: HardwareInfo
) -> list[MeasureVariant]:
    """What is worth measuring on this machine, starting from ``choices`` as planned (first).

    Every variant is complete choices (layers, strategy, op offload, flash attention, threads
    all fixed), so what wins is exactly what Keep fastest puts in the panel and loads:
    one layer fewer and one more than planned (the plan's margins are a judgement), experts
    in RAM instead of whole layers (a mixture of experts), with experts in RAM those of the
    other end of the model (the speed model chose one; filled to the same margin), op offload
    and flash attention the other way, and half the threads.
    """
    threads = choices.n_threads or hardware.physical_cores
    base = replace(
        pin_experts(choices, plan),
        n_gpu_layers=plan.n_gpu_layers,
        strategy=plan.strategy,
        op_offload=plan.op_offload,
        flash_attn=plan.flash_attn,
        n_threads=threads,
        n_ctx=plan.n_ctx,
    )
    found = [MeasureVariant("as planned", base)]
    if plan.gpus and plan.strategy == "layers":
        if plan.n_gpu_layers > 1:
            fewer = plan.n_gpu_layers - 1
            found.append(MeasureVariant(f"{fewer} GPU layers", replace(base, n_gpu_layers=fewer)))
        if plan.n_gpu_layers <= plan.n_layers:
            more = plan.n_gpu_layers + 1
            found.append(MeasureVariant(f"{more} GPU layers", replace(base, n_gpu_layers=more)))
    if plan.gpus and profile.is_moe:
        other: Strategy = "layers" if plan.strategy == "experts" else "experts"
        words = "whole layers" if other == "layers" else "experts in RAM"
        loose = replace(base, experts_in_ram=None, expert_tensors_in_ram=None, experts_from=None)
        found.append(MeasureVariant(words, replace(loose, strategy=other, n_gpu_layers=None)))
    if plan.gpus and plan.cpu_tensors:
        ends: ExpertsOrder = "last" if plan.experts_order == "first" else "first"
        found.append(
            MeasureVariant(
                f"experts of the {ends} layers in RAM",
                replace(base, experts_in_ram=None, expert_tensors_in_ram=None, experts_from=ends),
            )
        )
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
    if threads > 1:
        fewer_threads = max(1, threads // 2)
        found.append(
            MeasureVariant(f"{fewer_threads} threads", replace(base, n_threads=fewer_threads))
        )
    return found


@dataclass
class _Progress:
    rounds: dict[int, list[float]] = field(default_factory=dict)
    unfit: set[int] = field(default_factory=set)


def run_measure(
    engine: EngineLike,
    request: LoadRequest,
    variants: list[MeasureVariant],
    *,
    rounds: int = ROUNDS,
    tokens: int = TOKENS,
    on_report: Callable[[MeasureReport], None] | None = None,
) -> tuple[MeasureReport, LoadOutcome | None]:
    """Measure each variant in ``rounds`` interleaved rounds, in the one engine (each load ends
    the previous engine process first, so two copies of the model are never in memory).

    A variant that runs out of GPU memory is reported as not fitting and left out of the
    next rounds. Returns the report and the last load (the engine keeps it).

    Raises:
        MixdeskError: a load failed for another reason than GPU memory.
    """
    progress = _Progress()
    sampling = SamplingParams(max_tokens=tokens, ignore_eos=True, seed=1, temperature=0.0, top_k=1)
    last: LoadOutcome | None = None

    def report(done: int) -> MeasureReport:
        return MeasureReport(
            tuple(
                VariantResult(v, tuple(progress.rounds.get(i, ())), i in progress.unfit)
                for i, v in enumerate(variants)
            ),
            rounds_done=done,
            rounds=rounds,
        )

    for round_no in range(rounds):
        for i, variant in enumerate(variants):
            if i in progress.unfit:
                continue
            try:
                last = load_model(engine, replace(request, choices=variant.choices), retry=False)
            except (DeviceOutOfMemoryError, DeviceOutOfMemoryCrashError):
                progress.unfit.add(i)
                continue
            done = engine.chat([ChatMessage("user", PROMPT)], sampling).wait()
            progress.rounds.setdefault(i, []).append(done.stats.eval_tps)
            if on_report is not None:
                on_report(report(round_no))
    final = report(rounds)
    if on_report is not None:
        on_report(final)
    return final, last
