"""What this machine can run: the catalog's files ranked by the planner, for the first run.

Plain Python (no Qt): the welcome page runs :func:`rank_catalog` in a worker thread. Each
file is planned from its remote header (range requests, about 1 MiB per file), so the
verdicts are the planner's own, in its words (``OffloadPlan.placement_words``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.api import HubModel, list_models
from mixdesk.core.hub.catalog import CatalogModel, load_catalog
from mixdesk.core.hub.remote_header import HubUnreachableError
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import OffloadPlan

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
    """

    title: str
    repo_id: str
    model: HubModel
    plan: OffloadPlan | None
    problem: str = ""
    instruct: bool = True
    recommended: bool = False

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
    """The ranked catalog, or why there is none (``offline``: the Hub did not answer)."""

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


def _rank_key(c: Candidate) -> tuple[bool, bool, int]:
    return (c.recommended, c.fits, c.size if c.fits else -c.size)


def rank_catalog(
    hardware: HardwareInfo,
    *,
    calibration: Calibration,
    catalog: Sequence[CatalogModel] | None = None,
    profile_of: Callable[[HubModel], ModelProfile] | None = None,
    report: Callable[[Candidate], None] | None = None,
    cancel: threading.Event | None = None,
) -> FirstRunReport:
    """Plan every catalog file for ``hardware`` and rank them, the recommended one first.

    Args:
        hardware: the machine (or an override).
        calibration: what this machine measured (the speeds are then measured ones).
        catalog: the models to consider (default: the shipped catalog).
        profile_of: reads a model's profile from its remote header (default:
            :func:`mixdesk.core.hub.pull.remote_profile`).
        report: called with each candidate as soon as it is planned.
        cancel: stops between files when set.

    Returns:
        The candidates, recommended first, then those that fit (largest first), then the
        rest; ``offline`` when the Hub did not answer at all.
    """
    if profile_of is None:
        from mixdesk.core.hub.pull import remote_profile

        profile_of = remote_profile
    found: list[Candidate] = []
    for entry in catalog if catalog is not None else load_catalog():
        if not entry.files:
            continue
        try:
            listed = list_models(entry.repo_id)
        except HubUnreachableError as err:
            return FirstRunReport(offline=True, problem=str(err))
        except Exception as err:  # noqa: BLE001 - one repository missing is not the end
            log.info("catalog repo %s: %s", entry.repo_id, err)
            continue
        wanted = {f.filename for f in entry.files}
        for model in listed:
            if cancel is not None and cancel.is_set():
                return FirstRunReport(candidates=found)
            if model.filename not in wanted and model.name not in wanted:
                continue
            plan, problem = None, ""
            try:
                plan = make_plan(
                    profile_of(model), hardware, LoadChoices(), calibration=calibration
                )
            except Exception as err:  # noqa: BLE001 - shown in the row as a reason
                problem = type(err).__name__
            candidate = Candidate(
                entry.title, entry.repo_id, model, plan, problem, instruct=entry.instruct
            )
            found.append(candidate)
            if report is not None:
                report(candidate)
    best = recommend(found)
    ranked = [replace(c, recommended=True) if c is best else c for c in found]
    ranked.sort(key=_rank_key, reverse=True)
    return FirstRunReport(candidates=ranked)
