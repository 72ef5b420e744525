"""One vocabulary for a plan's verdict: the Models tab's badges, the first-run page and
``mixdesk plan`` say the same thing for every fit (the badge used to call a plan with the
experts in RAM "too big for this machine")."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import Fit, OffloadPlan
from mixdesk.core.planning.words import FIT_WORDS, describe, fit_badge, verdict
from tests.helpers import model_factory as mf
from tests.helpers.machines import V100


@pytest.fixture(scope="module")
def q4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A header-only Mixtral 8x7B Q4_K_M as TheBloke made it (no tensor data)."""
    return mf.mixtral_header_file(tmp_path_factory.mktemp("q4"), "Q4_K_M", legacy=True)


def test_every_verdict_has_its_words() -> None:
    assert set(FIT_WORDS) == set(Fit)
    assert len(set(FIT_WORDS.values())) == len(Fit)


def test_a_plan_with_experts_in_ram_is_not_too_big(q4: Path) -> None:
    profile = profile_local(q4)
    plan = make_plan(profile, V100, LoadChoices(strategy="experts"), calibration=Calibration())
    assert plan.fit == Fit.EXPERTS
    badge = fit_badge(plan)
    assert "too big" not in badge and "experts" in badge
    assert "too big" not in verdict(plan)
    assert plan.placement_words in verdict(plan)


@pytest.mark.parametrize(
    ("hardware", "fit"),
    [
        (V100, Fit.PARTIAL),
        (HardwareInfo(64 * GIB, 56 * GIB, 8, 16), Fit.CPU),
        (HardwareInfo(4 * GIB, 2 * GIB, 2, 2), Fit.NONE),
    ],
)
def test_badges_and_verdicts_follow_the_fit(q4: Path, hardware: HardwareInfo, fit: Fit) -> None:
    plan = make_plan(profile_local(q4), hardware, LoadChoices(), calibration=Calibration())
    assert plan.fit == fit
    if fit == Fit.NONE:
        assert fit_badge(plan) == verdict(plan) == FIT_WORDS[Fit.NONE]
    else:
        assert FIT_WORDS[Fit.NONE] not in fit_badge(plan) + verdict(plan)


def test_the_plan_keeps_reasons_and_the_words_add_the_speed(q4: Path) -> None:
    """The plan's reasons hold no speed sentence (no caller cuts off a last line); the words
    add it for those who show the whole explanation."""
    from mixdesk.core.planning.words import explain, speed_words

    plan = make_plan(profile_local(q4), V100, LoadChoices(), calibration=Calibration())
    assert not any("Expected speed" in line for line in describe(plan))
    assert explain(plan) == [*describe(plan), speed_words(plan)]
    assert plan.speed is not None
    assert f"{plan.speed.eval_tps:.3g} tokens/s generating" in speed_words(plan)
    assert "estimate" in speed_words(plan)


def test_the_plan_is_numbers_and_its_words_come_from_them(q4: Path) -> None:
    """The plan carries facts, not sentences; ``describe`` says them, and never "the other 0
    layers" for a setting that puts every layer on a GPU too small for it."""
    profile = profile_local(q4)
    plan = make_plan(profile, V100, LoadChoices(n_gpu_layers=-1), calibration=Calibration())
    assert plan.fit == Fit.NONE and plan.facts.layers_fixed
    assert not hasattr(plan, "explanation")
    said = " ".join(describe(plan))
    assert "other 0 layers" not in said and "no layer stays in CPU RAM" in said
    assert "will not fit" in said
    auto = make_plan(profile, V100, LoadChoices(), calibration=Calibration())
    assert auto.fit == Fit.PARTIAL and auto.facts.one_more_layer_short_bytes > 0
    assert "One more layer would need" in " ".join(describe(auto))


def test_experts_in_ram_tensor_by_tensor_are_said_in_one_vocabulary(q4: Path) -> None:
    """Every front end names the same tensors: the CLI's explanation, the placement words of
    the panel and the Models tab's badge."""
    profile = profile_local(q4)
    big = HardwareInfo(
        64 * GIB, 56 * GIB, 8, 16, gpus=[GpuInfo("Big GPU", "cuda", 48 * GIB, 48 * GIB)]
    )

    def plan_with(count: int) -> OffloadPlan:
        choices = LoadChoices(strategy="experts", expert_tensors_in_ram=count, experts_from="first")
        return make_plan(profile, big, choices, calibration=Calibration())

    plan = plan_with(17)
    phrase = "experts of layers 0-4 and 2 of 3 expert tensors of layer 5"
    said = " ".join(describe(plan))
    assert f"{phrase} (" in said and "stay in CPU RAM" in said
    assert "Layer 5 keeps its attention and 1 of its 3 expert tensors on Big GPU" in said
    assert plan.placement_words.endswith(f", {phrase} in RAM")
    assert fit_badge(plan) == f"all layers on GPU, {phrase} in RAM"
    whole = " ".join(describe(plan_with(15)))
    assert "experts of layers 0-4 (" in whole and "(llama.cpp's --n-cpu-moe 5)" in whole
    assert "keeps its attention" not in whole
