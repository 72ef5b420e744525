"""A repository's files for the Models tab: listed (from the catalog while the Hub is out of
reach), planned for this machine and ranked by the plans' predicted speed.

Plain Python (no Qt): the Models tab runs :func:`list_repo_files` and :func:`plan_files` in
worker threads. Profiles read from remote headers are kept by the caller, so planning again
(after ``mixdesk calibrate`` measured the machine) needs no network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.api import HubModel, list_models
from mixdesk.core.hub.catalog import CatalogModel
from mixdesk.core.hub.known_shapes import known_file_profile
from mixdesk.core.hub.remote_header import HubUnreachableError
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.onboarding.first_run import catalog_hub_model, rank_key
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import OffloadPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoListing:
    """A repository's models; ``offline``: the Hub did not answer, and the models are the
    catalog's own files for the repository (none if it is not in the catalog)."""

    repo_id: str
    models: list[HubModel] = field(default_factory=list)
    offline: bool = False
    problem: str = ""


@dataclass(frozen=True)
class FileVerdict:
    """One listed model planned for this machine (``plan`` None: ``problem`` says why)."""

    name: str
    plan: OffloadPlan | None
    problem: str = ""
    #: Planned from the tensor table the catalog knows, not from the file's own header.
    known: bool = False


def list_repo_files(repo_id: str, catalog: Sequence[CatalogModel]) -> RepoListing:
    """The repository's models, or (the Hub out of reach) the catalog's files for it.

    Raises:
        HubError: the Hub answered that the repository is missing, gated or has no GGUF.
    """
    try:
        return RepoListing(repo_id, list_models(repo_id))
    except HubUnreachableError as err:
        entry = next((m for m in catalog if m.repo_id == repo_id), None)
        known = [catalog_hub_model(repo_id, f) for f in entry.files] if entry is not None else []
        return RepoListing(repo_id, known, offline=True, problem=str(err))


def plan_file(
    listing: RepoListing,
    model: HubModel,
    *,
    hardware: HardwareInfo,
    calibration: Calibration,
    catalog: Sequence[CatalogModel],
    profiles: dict[HubModel, ModelProfile],
    profile_of: Callable[[HubModel], ModelProfile],
) -> FileVerdict:
    """Plan one model: from its profile read before, its remote header, or (offline, or the
    header out of reach) the tensor table the catalog knows."""
    known = False
    profile = profiles.get(model)
    if profile is None:
        try:
            if listing.offline:
                raise HubUnreachableError(listing.problem)
            profile = profiles[model] = profile_of(model)
        except Exception as err:  # noqa: BLE001 - the catalog may know it; else the reason shows
            log.info("header of %s: %s", model.filename, err)
            profile = known_file_profile(list(catalog), listing.repo_id, model.filename)
            if profile is None:
                return FileVerdict(model.name, None, type(err).__name__)
            known = True
    try:
        plan = make_plan(profile, hardware, LoadChoices(), calibration=calibration)
    except Exception as err:  # noqa: BLE001 - shown in the row as a reason
        return FileVerdict(model.name, None, type(err).__name__, known)
    return FileVerdict(model.name, plan, "", known)


def plan_files(
    listing: RepoListing,
    *,
    hardware: HardwareInfo,
    calibration: Calibration,
    catalog: Sequence[CatalogModel],
    profiles: dict[HubModel, ModelProfile],
    report: Callable[[FileVerdict], None],
    cancel: threading.Event | None = None,
    profile_of: Callable[[HubModel], ModelProfile] | None = None,
) -> int:
    """Plan every model of ``listing``, reporting each verdict as it is made.

    Args:
        listing: what :func:`list_repo_files` found.
        hardware, calibration: the machine and what it measured.
        catalog: the built-in catalog (the shapes it knows, for files whose header cannot
            be read).
        profiles: profiles read before, by model; those read now are added.
        report: called with each :class:`FileVerdict`.
        cancel: stops between models when set.
        profile_of: reads a remote header (default :func:`mixdesk.core.hub.pull.remote_profile`).

    Returns:
        How many models were planned.
    """
    if profile_of is None:
        from mixdesk.core.hub.pull import remote_profile

        profile_of = remote_profile
    done = 0
    for model in listing.models:
        if cancel is not None and cancel.is_set():
            break
        report(
            plan_file(
                listing,
                model,
                hardware=hardware,
                calibration=calibration,
                catalog=catalog,
                profiles=profiles,
                profile_of=profile_of,
            )
        )
        done += 1
    return done


def ranked(models: Sequence[HubModel], verdicts: dict[str, FileVerdict]) -> list[HubModel]:
    """``models`` best first for this machine (:func:`rank_key`), the ones not planned yet
    last in their listed order."""

    def key(model: HubModel) -> tuple[int, float, int]:
        verdict = verdicts.get(model.name)
        if verdict is None:
            return (-1, 0.0, 0)
        return rank_key(verdict.plan, model.size)

    return sorted(models, key=key, reverse=True)
