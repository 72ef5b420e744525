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
from mixdesk.core.planning.experts import expert_tensors
from tests.helpers import model_factory as mf
from tests.helpers.machines import GPU_8GIB, V100

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


def test_with_experts_in_ram_the_other_end_is_measured_too(tmp_path: Path) -> None:
    """The speed model chose whose experts stay in RAM; Measure checks it: the plan exactly
    as planned, and the other end's experts filled to the same margin."""
    profile = profile_local(mf.mixtral_header_file(tmp_path, "Q4_K_M", legacy=True))
    choices = LoadChoices(strategy="experts", n_ctx=2048)
    plan = make_plan(profile, V100, choices, calibration=Calibration())
    assert plan.cpu_tensors and plan.partial_layer is not None and plan.experts_order == "last"
    variants = {v.label: v.choices for v in measure_variants(choices, plan, profile, V100)}
    planned = variants["as planned"]
    assert (planned.expert_tensors_in_ram, planned.experts_from) == (len(plan.cpu_tensors), "last")
    assert make_plan(profile, V100, planned, calibration=Calibration()).cpu_tensors == (
        plan.cpu_tensors
    )
    other = variants["experts of the first layers in RAM"]
    assert (other.experts_from, other.expert_tensors_in_ram) == ("first", None)
    first = make_plan(profile, V100, other, calibration=Calibration())
    assert first.experts_order == "first" and first.gpu is not None and plan.gpu is not None
    assert first.gpu.used_bytes <= first.gpu.free_bytes
    biggest = max(t.nbytes for t in expert_tensors(profile))
    assert abs(first.gpu.used_bytes - plan.gpu.used_bytes) <= biggest
