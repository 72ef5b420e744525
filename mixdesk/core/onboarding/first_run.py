"""What this machine can run: the catalog's files ranked by the planner, for the first run.

Plain Python (no Qt): the welcome page runs :func:`rank_catalog` in a worker thread. Each
file is planned from its remote header (range requests, about 1 MiB per file), so the
verdicts are the planner's own, in its words (``OffloadPlan.placement_words``); without
the Hub, from the tensor table the catalog knows (:mod:`mixdesk.core.hub.known_shapes`).
Files are ranked by the plan's predicted generation speed (measured on this machine once
it is calibrated): :func:`rank_key`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.api import HubFileInfo, HubModel, list_models
from mixdesk.core.hub.catalog import CatalogFile, CatalogModel, load_catalog
from mixdesk.core.hub.known_shapes import known_profile
from mixdesk.core.hub.remote_header import HubUnreachableError
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import Fit, OffloadPlan

log = logging.getLogger(__name__)

#: The slowest expected generation speed the recommendation accepts (tokens/s).
MIN_RECOMMENDED_TPS = 5.0


@dataclass(frozen=True)
class Candidate:
    """One downloadable file of the catalog, planned for this machine.

    Attributes:
        title: the catalog model's title.
        repo_id: its repository.
        model: the file (or split parts) as the Hub lists it.
        plan: the planner's plan from the remote header (None when it could not be read).
        problem: why there is no plan ("" when there is one).
        instruct: whether the model is tuned for chat.
        recommended: the best fit for this machine (see :func:`recommend`).
        known: planned from the tensor table the catalog knows, not from the file's own
            header (the Hub was out of reach).
    """

    title: str
    repo_id: str
    model: HubModel
    plan: OffloadPlan | None
    problem: str = ""
    instruct: bool = True
    recommended: bool = False
    known: bool = False

    @property
    def size(self) -> int:
        """Bytes to download."""
        return self.model.size

    @property
    def fits(self) -> bool:
        """Whether the planner found room for it in RAM and VRAM, margins included."""
        return self.plan is not None and self.plan.fit != "none"


@dataclass(frozen=True)
class FirstRunReport:
    """The ranked catalog; ``offline``: the Hub did not answer (the candidates are then the
    built-in files, planned from what the catalog knows, and ``problem`` says why)."""

    candidates: list[Candidate] = field(default_factory=list)
    offline: bool = False
    problem: str = ""


def download_seconds(size: int, speed_bps: float) -> float | None:
    """Time to download ``size`` bytes at a measured speed (None until one was measured)."""
    return size / speed_bps if speed_bps > 0 else None


def download_words(size: int, speed_bps: float) -> str:
    """``size`` and, once a download has measured the speed, how long it will take."""
    seconds = download_seconds(size, speed_bps)
    if seconds is None:
        return format_bytes(size)
    if seconds < 90:
        return f"{format_bytes(size)}, about {seconds:.0f} s to download"
    minutes = seconds / 60
    if minutes < 90:
        return f"{format_bytes(size)}, about {minutes:.0f} min to download"
    return f"{format_bytes(size)}, about {minutes / 60:.1f} h to download"


def recommend(candidates: Sequence[Candidate]) -> Candidate | None:
    """The largest chat model that fits RAM and VRAM (the planner's margins included) at an
    expected :data:`MIN_RECOMMENDED_TPS` or more; failing that, the smallest that fits."""
    fitting = [c for c in candidates if c.fits and c.instruct]
    fast = [
        c
        for c in fitting
        if c.plan is not None
        and c.plan.speed is not None
        and c.plan.speed.eval_tps >= MIN_RECOMMENDED_TPS
    ]
    if fast:
        return max(fast, key=lambda c: c.size)
    return min(fitting, key=lambda c: c.size) if fitting else None


def rank_key(plan: OffloadPlan | None, size: int) -> tuple[int, float, int]:
    """Where a file ranks for this machine (sort descending): files that fit (CPU only and
    partial offload included) first, the faster predicted generation first (measured on this
    machine once it is calibrated), the larger first at the same speed; then files too big
    for this machine, the smallest first; then files that could not be planned."""
    if plan is None:
        return (0, 0.0, -size)
    if plan.fit is Fit.NONE or plan.speed is None:
        return (1, 0.0, -size)
    return (2, plan.speed.eval_tps, size)


def catalog_hub_model(repo_id: str, file: CatalogFile) -> HubModel:
    """A catalog file as the Hub would list it, from the catalog alone (its name and size)."""
    name = file.filename[: -len(".gguf")] if file.filename.endswith(".gguf") else file.filename
    info = HubFileInfo(repo_id, file.filename, file.size, None, "main")
    return HubModel(name=name, files=(info,), quant=file.quant)


def _plan(
    profile: ModelProfile | None, hardware: HardwareInfo, calibration: Calibration
) -> tuple[OffloadPlan | None, str]:
    if profile is None:
        return None, "its shape is not known without the Hub"
    try:
        return make_plan(profile, hardware, LoadChoices(), calibration=calibration), ""
    except Exception as err:  # noqa: BLE001 - shown in the row as a reason
        return None, type(err).__name__


def _known_candidates(
    entry: CatalogModel, hardware: HardwareInfo, calibration: Calibration
) -> list[Candidate]:
    """The entry's built-in files planned from what the catalog knows (no network)."""
    found = []
    for file in entry.files:
        plan, problem = _plan(known_profile(entry, file), hardware, calibration)
        model = catalog_hub_model(entry.repo_id, file)
        found.append(
            Candidate(entry.title, entry.repo_id, model, plan, problem, entry.instruct, known=True)
        )
    return found


def _remote_candidates(
    entry: CatalogModel,
    listed: list[HubModel],
    hardware: HardwareInfo,
    calibration: Calibration,
    profile_of: Callable[[HubModel], ModelProfile],
) -> list[Candidate]:
    """The entry's files the Hub lists, planned from their remote headers (from what the
    catalog knows when a header cannot be read)."""
    files = {f.filename: f for f in entry.files}
    found = []
    for model in listed:
        # a split model is listed by its first part; the catalog may name it without parts
        file = files.get(model.filename) or files.get(model.name) or files.get(f"{model.name}.gguf")
        if file is None:
            continue
        known = False
        try:
            profile: ModelProfile | None = profile_of(model)
        except Exception as err:  # noqa: BLE001 - the catalog may know it; else the reason shows
            log.info("header of %s: %s", model.filename, err)
            profile, known = known_profile(entry, file), True
            if profile is None:
                found.append(
                    Candidate(
                        entry.title, entry.repo_id, model, None, type(err).__name__, entry.instruct
                    )
                )
                continue
        plan, problem = _plan(profile, hardware, calibration)
        found.append(
            Candidate(entry.title, entry.repo_id, model, plan, problem, entry.instruct, known=known)
        )
    return found


def _kept(
    profile_of: Callable[[HubModel], ModelProfile], profiles: dict[HubModel, ModelProfile]
) -> Callable[[HubModel], ModelProfile]:
    def read(model: HubModel) -> ModelProfile:
        if model not in profiles:
            profiles[model] = profile_of(model)
        return profiles[model]

    return read


def rank_catalog(
    hardware: HardwareInfo,
    *,
    calibration: Calibration,
    catalog: Sequence[CatalogModel] | None = None,
    profile_of: Callable[[HubModel], ModelProfile] | None = None,
    profiles: dict[HubModel, ModelProfile] | None = None,
    report: Callable[[Candidate], None] | None = None,
    cancel: threading.Event | None = None,
) -> FirstRunReport:
    """Plan every catalog file for ``hardware`` and rank them (:func:`rank_key`).

    Args:
        hardware: the machine (or an override).
        calibration: what this machine measured (the speeds are then measured ones).
        catalog: the models to consider (default: the shipped catalog).
        profile_of: reads a model's profile from its remote header (default:
            :func:`mixdesk.core.hub.pull.remote_profile`).
        profiles: profiles read before, by model, and where those read now are kept (ranking
            again, after the machine was measured, then needs no network).
        report: called with each candidate as soon as it is planned.
        cancel: stops between repositories when set.

    Returns:
        The candidates, best first, the recommended one marked; ``offline`` when the Hub did
        not answer (the built-in files are then planned from what the catalog knows).
    """
    if profile_of is None:
        from mixdesk.core.hub.pull import remote_profile

        profile_of = remote_profile
    if profiles is not None:
        profile_of = _kept(profile_of, profiles)
    found: list[Candidate] = []
    offline, problem = False, ""
    for entry in catalog if catalog is not None else load_catalog():
        if not entry.files:
            continue
        if cancel is not None and cancel.is_set():
            return FirstRunReport(candidates=found, offline=offline, problem=problem)
        planned: list[Candidate] = []
        if not offline:
            try:
                listed = list_models(entry.repo_id)
            except HubUnreachableError as err:
                offline, problem = True, str(err)
            except Exception as err:  # noqa: BLE001 - one repository missing is not the end
                log.info("catalog repo %s: %s", entry.repo_id, err)
                continue
            else:
                planned = _remote_candidates(entry, listed, hardware, calibration, profile_of)
        if offline:
            planned = _known_candidates(entry, hardware, calibration)
        for candidate in planned:
            found.append(candidate)
            if report is not None:
                report(candidate)
    best = recommend(found)
    ranked = [replace(c, recommended=True) if c is best else c for c in found]
    ranked.sort(key=lambda c: rank_key(c.plan, c.size), reverse=True)
    return FirstRunReport(candidates=ranked, offline=offline, problem=problem)
