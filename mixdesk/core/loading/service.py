"""The one way from "this model" to "loaded": model + machine + choices -> plan -> ``LoadConfig``.

Every front end (``mixdesk chat``, ``mixdesk serve``, the window's Load, Apply, Keep fastest
and Measure) calls :func:`plan_load`; nothing else builds a :class:`LoadConfig`. So a model
loads the same way whichever way it is started, and what the plan shows is what loads.

Rules kept here, once:

- ``n_gpu_layers`` is llama.cpp's number, 0 to ``n_layers + 1`` (the output layer counts as
  one); "all" (-1) becomes ``n_layers + 1``. The config carries the plan's number.
- A context of 0 means the model's own (trained) context; the plan is made for that length.
- The planner's choices (layers, context, op offload) fill in whatever the user left open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mixdesk.core.engine.protocol import (
    Buffers,
    LoadConfig,
)
from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import ResolvedModel
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.planning.calibration import Calibration, setting_key
from mixdesk.core.planning.placement import offload_devices
from mixdesk.core.planning.planner import plan_offload
from mixdesk.core.planning.speed import Speed, SpeedSource
from mixdesk.core.planning.types import OffloadPlan
from mixdesk.core.planning.words import describe

if TYPE_CHECKING:
    from mixdesk.core.engine.like import EngineLike

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSetup:
    """A model ready to load: what it is, the plan, and the exact configuration."""

    model: ResolvedModel
    profile: ModelProfile
    plan: OffloadPlan
    config: LoadConfig
    #: The user's choices the plan was made from (a retry changes the layer count only).
    choices: LoadChoices = field(default_factory=LoadChoices)
    #: What this machine measured, that the plan was made with (a retry plans with it too).
    calibration: Calibration = field(default_factory=Calibration)

    @property
    def summary(self) -> str:
        """One line: the layers and context chosen, and why (without the speed estimate)."""
        why = " ".join(describe(self.plan))
        return f"--ngl {self.config.n_gpu_layers}, context {self.config.n_ctx}: {why}".rstrip(": ")


def make_plan(
    profile: ModelProfile,
    hardware: HardwareInfo,
    choices: LoadChoices,
    *,
    calibration: Calibration,
    measured: Buffers | None = None,
) -> OffloadPlan:
    """The offload plan for ``choices`` (also for a model not downloaded yet: ``mixdesk plan``):
    the one way to plan, for every front end.

    Args:
        profile, hardware, choices: the model, the machine, the user's choices.
        calibration: what this machine measured (runtime overheads, speed coefficients, the
            speeds answers ran at); ``Calibration()`` when nothing is.
        measured: buffer sizes from a dry run (exact compute buffers per device).

    Raises:
        InvalidArgumentError: a choice is out of range.
    """
    choices.validate()
    n_ctx = choices.n_ctx
    if n_ctx == 0:
        n_ctx = profile.context_length or None
    threads = choices.n_threads or hardware.physical_cores
    plan = plan_offload(
        profile,
        hardware,
        n_ctx=n_ctx,
        type_k=choices.kv_type,
        type_v=choices.kv_type,
        flash_attn=choices.flash_attn,
        n_gpu_layers=choices.n_gpu_layers,
        measured_compute=measured,
        strategy=choices.strategy,
        experts_in_ram=choices.experts_in_ram,
        expert_tensors_in_ram=choices.expert_tensors_in_ram,
        experts_from=choices.experts_from,
        overheads=calibration.overheads,
        speed_model=calibration.speed,
        threads=threads,
    )
    seen = calibration.seen.get(speed_key(profile, plan, threads))
    if seen is None or plan.speed is None:
        return plan
    measured_speed = Speed(
        seen.eval_tps, seen.prompt_tps or plan.speed.prompt_tps, SpeedSource.MEASURED, 0.05
    )
    return replace(plan, speed=measured_speed)


def speed_key(profile: ModelProfile, plan: OffloadPlan, threads: int) -> str:
    """The key of a plan's setting among the speeds seen (:func:`calibration.setting_key`)."""
    return setting_key(
        Path(profile.files[0]).name if profile.files else profile.name,
        profile.file_bytes,
        n_gpu_layers=plan.n_gpu_layers,
        experts=f"{len(plan.cpu_tensors)}{plan.experts_order}" if plan.cpu_tensors else "0",
        threads=threads,
        n_ctx=plan.n_ctx,
        devices=tuple(d.buffer_name for d in plan.gpus),
    )


#: Dry runs at most per load (each may move the plan one or more layers down).
MAX_DRY_RUNS = 3


def plan_load(
    model: ResolvedModel,
    hardware: HardwareInfo,
    choices: LoadChoices | None = None,
    *,
    calibration: Calibration,
    profile: ModelProfile | None = None,
    engine: EngineLike | None = None,
) -> LoadSetup:
    """Plan a load and build its configuration: the only place a :class:`LoadConfig` is made.

    Args:
        model: the model, resolved and checked once (:func:`~.model.resolve_model`).
        hardware: the machine (with any overrides already applied).
        choices: the user's choices (defaults: everything chosen by MixDesk).
        calibration: what this machine measured (see :func:`make_plan`).
        profile: the model's profile when the caller has read it already.
        engine: an engine to dry-run the plan in (llama.cpp's ``no_alloc`` mode): the compute
            buffers of every device are then llama.cpp's own figures for this very load, and a
            plan that turns out not to fit moves down before anything is allocated.

    Raises:
        InvalidArgumentError, GGUFHeaderError: bad input.
    """
    choices = choices or LoadChoices()
    choices.validate()  # a bad value is reported before any file is read
    path = model.path
    if profile is None:
        profile = profile_local(path)
    plan = make_plan(profile, hardware, choices, calibration=calibration)
    if engine is not None and plan.n_gpu_layers > 0:
        plan = _dry_run_checked(
            engine,
            path,
            profile=profile,
            hardware=hardware,
            choices=choices,
            plan=plan,
            calibration=calibration,
        )
    return LoadSetup(
        model=model,
        profile=profile,
        plan=plan,
        config=_config(path, plan, choices, hardware),
        choices=choices,
        calibration=calibration,
    )


def _dry_run_checked(
    engine: EngineLike,
    path: Path,
    *,
    profile: ModelProfile,
    hardware: HardwareInfo,
    choices: LoadChoices,
    plan: OffloadPlan,
    calibration: Calibration,
) -> OffloadPlan:
    """``plan`` with llama.cpp's own compute buffers from a dry run; when they do not fit
    (and the user did not fix the layers), planned again with them, at most
    :data:`MAX_DRY_RUNS` dry runs in all. With experts in RAM, a plan that fits but leaves
    room for an expert tensor more on the GPU is planned again too, so the device is filled
    to its margin by llama.cpp's figures. The context stays the one first chosen."""
    pinned_ctx = replace(choices, n_ctx=plan.n_ctx)
    if plan.strategy == "experts":  # the speed model's choice of order stays
        pinned_ctx = replace(pinned_ctx, experts_from=plan.experts_order)
    user_fixed = (
        choices.n_gpu_layers is not None
        or choices.experts_in_ram is not None
        or choices.expert_tensors_in_ram is not None
    )
    first, fitting = plan, None
    for _ in range(MAX_DRY_RUNS):
        measured = engine.dry_run(_config(path, plan, choices, hardware))
        same = pin_experts(replace(pinned_ctx, n_gpu_layers=plan.n_gpu_layers), plan)
        exact = _as_chosen(
            make_plan(profile, hardware, same, calibration=calibration, measured=measured), first
        )
        fits = all(d.used_bytes <= d.free_bytes for d in exact.gpus)
        if user_fixed:
            return exact
        # Planned again with the real compute buffers: fewer layers if they are bigger than
        # the formula said, or expert tensors back on the GPU if they are smaller.
        again = make_plan(profile, hardware, pinned_ctx, calibration=calibration, measured=measured)
        if fits and len(again.cpu_tensors) >= len(exact.cpu_tensors):
            return exact
        fitting = exact if fits else fitting
        plan = _as_chosen(again, first)
        if plan.n_gpu_layers == 0:
            break
    return fitting or plan


def _as_chosen(plan: OffloadPlan, first: OffloadPlan) -> OffloadPlan:
    """``plan`` (planned again with measured buffers) saying what ``first`` said of its
    choices: the context it reduced, and whether the speed model chose the order of experts."""
    facts = replace(
        plan.facts,
        experts_order_fixed=first.facts.experts_order_fixed,
        other_order_speed=first.facts.other_order_speed,
    )
    return replace(plan, ctx_reduced_from=first.ctx_reduced_from, facts=facts)


def _config(
    path: Path, plan: OffloadPlan, choices: LoadChoices, hardware: HardwareInfo
) -> LoadConfig:
    """The load configuration of ``plan``."""
    return LoadConfig(
        model_path=str(path),
        n_gpu_layers=plan.n_gpu_layers,
        n_ctx=plan.n_ctx,
        n_threads=choices.n_threads,
        n_batch=choices.n_batch,
        flash_attn=plan.flash_attn,
        type_k=plan.type_k,
        type_v=plan.type_v,
        use_mmap=choices.use_mmap,
        op_offload=plan.op_offload if choices.op_offload is None else choices.op_offload,
        rpc_servers=tuple(g.endpoint for g in offload_devices(hardware) if g.backend == "rpc")
        if plan.n_gpu_layers > 0
        else (),
        tensor_split=tuple(float(c) for c in plan.tensor_split),
        cpu_tensors=plan.cpu_tensors,
    )


def pin_experts(choices: LoadChoices, plan: OffloadPlan) -> LoadChoices:
    """``choices`` that keep exactly ``plan``'s expert tensors in RAM (unchanged for the
    "layers" strategy)."""
    if plan.strategy != "experts":
        return choices
    return replace(
        choices,
        experts_in_ram=None,
        expert_tensors_in_ram=len(plan.cpu_tensors),
        experts_from=plan.experts_order,
    )


@dataclass(frozen=True)
class LoadRequest:
    """A model to load and how: what a front end hands to whoever runs the engine.

    The model is resolved and checked already (:func:`~.model.resolve_model`); the request is
    planned where the engine runs (off the GUI thread), so a front end never builds a
    configuration itself.
    """

    model: ResolvedModel
    hardware: HardwareInfo
    choices: LoadChoices = field(default_factory=LoadChoices)
    #: The model's profile when the front end has read it already.
    profile: ModelProfile | None = None
    #: What this machine measured (see :func:`make_plan`).
    calibration: Calibration = field(default_factory=Calibration)

    def setup(self, *, engine: EngineLike | None = None) -> LoadSetup:
        """Plan this request (see :func:`plan_load`), dry-run in ``engine`` if given."""
        return plan_load(
            self.model,
            self.hardware,
            self.choices,
            calibration=self.calibration,
            profile=self.profile,
            engine=engine,
        )
