"""Measure that measures: interleaved rounds, median and spread, a winner only beyond noise."""

from __future__ import annotations

from pathlib import Path

from mixdesk.core.engine import Engine
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.measure import (
    MeasureReport,
    MeasureVariant,
    VariantResult,
    measure_variants,
    run_measure,
)
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest, make_plan
from mixdesk.core.planning.calibration import Calibration
from tests.helpers.machines import GPU_8GIB

A, B, C = (MeasureVariant(x, LoadChoices(n_threads=i + 1)) for i, x in enumerate("abc"))


def _report(*rounds: tuple[float, ...]) -> MeasureReport:
    return MeasureReport(
        tuple(VariantResult(v, r) for v, r in zip((A, B, C), rounds, strict=False)), rounds_done=3
    )


def test_a_winner_only_beyond_the_noise() -> None:
    # B is faster by more than either spread: it wins
    assert _report((10, 11, 10.5), (14, 15, 14.5)).winner() == VariantResult(B, (14, 15, 14.5))
    # B's median is higher but within the spread: no difference beyond noise
    assert _report((10, 13, 11), (12, 12.5, 10)).winner() is None
    # one wild round (issue 20's 2018 tok/s next to 12) cannot make a winner
    noisy = _report((43, 88, 60), (12, 2018, 11.8))
    assert noisy.winner() is None
    # not finished: no winner yet
    unfinished = MeasureReport(_report((1, 1, 1), (9, 9, 9)).results, rounds_done=1)
    assert unfinished.winner() is None


def test_every_variant_is_complete_choices(models: dict[str, Path]) -> None:
    """What wins is exactly what Keep fastest loads: layers, strategy, op offload, flash
    attention and threads are all fixed in every variant, and layer counts around the plan
    are among them."""
    profile = profile_local(models["q4_k_m"])
    choices = LoadChoices(n_ctx=512)
    plan = make_plan(profile, GPU_8GIB, choices, calibration=Calibration())
    variants = measure_variants(choices, plan, profile, GPU_8GIB)
    assert variants[0].label == "as planned"
    for v in variants:
        c = v.choices
        assert c.n_threads is not None and c.op_offload is not None and c.n_ctx == plan.n_ctx
    labels = [v.label for v in variants]
    assert f"{plan.n_gpu_layers - 1} GPU layers" in labels
    assert "experts in RAM" in labels and "1 threads" in labels


def test_rounds_are_interleaved_and_counted(models: dict[str, Path], tmp_path: Path) -> None:
    from mixdesk.core.machine.hardware import GIB, HardwareInfo

    cpu = HardwareInfo(4 * GIB, 4 * GIB, physical_cores=2, logical_cores=2)
    request = LoadRequest(resolve_file(models["f32"]), cpu)
    variants = [
        MeasureVariant("as planned", LoadChoices(n_ctx=256, n_threads=2)),
        MeasureVariant("1 threads", LoadChoices(n_ctx=256, n_threads=1)),
    ]
    order: list[tuple[int, ...]] = []
    with Engine(log_dir=tmp_path) as engine:
        report, last = run_measure(
            engine,
            request,
            variants,
            rounds=3,
            tokens=8,
            on_report=lambda r: order.append(tuple(len(x.rounds) for x in r.results)),
        )
    # a, b, a, b, a, b: never two rounds of one variant before the other's
    assert order[:6] == [(1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    assert report.finished and all(len(r.rounds) == 3 for r in report.results)
    assert all(tps > 0 for r in report.results for tps in r.rounds)
    assert last is not None and last.info.n_threads == 1  # the last load stays
