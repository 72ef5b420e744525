"""The out-of-memory retry as pure logic: how many layers fewer (fewer_gpu_layers), and that
the retry is the user's own choices with another layer count (with_gpu_layers). No engine:
the plans are the planner's for a generated model on a 1 GiB GPU (700 MiB free)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import fewer_gpu_layers, with_gpu_layers
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadSetup, plan_load
from mixdesk.core.planning.calibration import Calibration
from mixdesk.errors import DeviceOutOfMemoryCrashError, DeviceOutOfMemoryError
from tests.helpers.fake_engine import out_of_memory
from tests.helpers.window import GPU

#: No measurements: the planner's own figures, the same on every machine.
NOTHING_MEASURED = Calibration()

#: Everything the user can choose besides the layer count, none of them MixDesk's default.
KEPT = LoadChoices(
    n_gpu_layers=-1,
    n_ctx=768,
    kv_type="q8_0",
    flash_attn=True,
    n_threads=3,
    n_batch=256,
    use_mmap=False,
    op_offload=False,
)


@pytest.fixture
def setup(models: dict[str, Path]) -> LoadSetup:
    return plan_load(resolve_file(models["q4_k_m"]), GPU, KEPT, calibration=NOTHING_MEASURED)


def _oom(requested: int, buffer: str = "model") -> DeviceOutOfMemoryError:
    err = out_of_memory("CUDA0", buffer=buffer, requested=requested)
    assert isinstance(err, DeviceOutOfMemoryError)
    return err


def test_a_retry_keeps_every_choice_but_the_layer_count(setup: LoadSetup) -> None:
    assert setup.config.n_gpu_layers == 5  # all 4 layers and the output
    retried = with_gpu_layers(setup, 2, GPU)
    assert retried.model is setup.model
    assert retried.choices == replace(KEPT, n_gpu_layers=2, n_ctx=setup.config.n_ctx)
    config = retried.config
    assert config.n_gpu_layers == 2
    assert config == replace(setup.config, n_gpu_layers=2, tensor_split=config.tensor_split)
    assert (config.op_offload, config.n_threads, config.type_k, config.type_v) == (
        False,
        3,
        "q8_0",
        "q8_0",
    )
    assert (config.flash_attn, config.n_batch, config.use_mmap, config.n_ctx) == (
        True,
        256,
        False,
        768,
    )


def test_a_retry_keeps_the_context_the_first_plan_chose(models: dict[str, Path]) -> None:
    """With the context left to MixDesk, the retry loads the context the first load had
    (fewer GPU layers never buys a different context behind the user's back)."""
    first = plan_load(
        resolve_file(models["q4_k_m"]), GPU, replace(KEPT, n_ctx=None), calibration=NOTHING_MEASURED
    )
    retried = with_gpu_layers(first, 1, GPU)
    assert retried.config.n_ctx == first.config.n_ctx
    assert retried.choices.n_ctx == first.config.n_ctx


def test_fewer_layers_fit_below_what_the_device_could_not_allocate(setup: LoadSetup) -> None:
    device = setup.plan.gpus[0]
    for requested in (9 << 20, 11 << 20, 12 << 20, 100 << 20):
        n = fewer_gpu_layers(setup, _oom(requested), GPU)
        assert n is not None
        assert 0 <= n < setup.config.n_gpu_layers
        if n > 0:  # what was chosen fits in the room the failure showed
            share = with_gpu_layers(setup, n, GPU).plan.gpus[0]
            need = share.weights_bytes + share.kv_bytes + device.compute_bytes
            assert need < requested
    counts = []
    for requested in (9 << 20, 11 << 20, 100 << 20):
        n = fewer_gpu_layers(setup, _oom(requested), GPU)
        assert n is not None
        counts.append(n)
    assert counts == sorted(counts)  # more room never means fewer layers
    assert counts[-1] == setup.config.n_gpu_layers - 1  # at least one layer fewer


def test_a_kv_or_compute_failure_counts_what_was_already_placed(setup: LoadSetup) -> None:
    """A KV cache buffer fails after the weights are on the device: the room is the weights
    plus the request, so more layers fit than for a model buffer of the same request."""
    requested = 9 << 20
    model = fewer_gpu_layers(setup, _oom(requested, "model"), GPU)
    kv = fewer_gpu_layers(setup, _oom(requested, "KV"), GPU)
    compute = fewer_gpu_layers(setup, _oom(requested, "compute"), GPU)
    assert model is not None and kv is not None and compute is not None
    assert model <= kv <= compute


def test_no_retry_without_gpu_layers_or_with_experts_in_ram(
    setup: LoadSetup, models: dict[str, Path]
) -> None:
    on_cpu = plan_load(
        resolve_file(models["q4_k_m"]),
        GPU,
        replace(KEPT, n_gpu_layers=0),
        calibration=NOTHING_MEASURED,
    )
    assert fewer_gpu_layers(on_cpu, _oom(1 << 20), GPU) is None
    experts = replace(
        setup, config=replace(setup.config, cpu_tensors=("blk.0.ffn_up_exps.weight",))
    )
    assert fewer_gpu_layers(experts, _oom(1 << 20), GPU) is None


def test_a_failure_that_gives_no_size_drops_one_layer(setup: LoadSetup) -> None:
    crash = DeviceOutOfMemoryCrashError(
        "The engine died of a GPU out-of-memory.", returncode=-6, device="", requested_bytes=0
    )
    assert fewer_gpu_layers(setup, crash, GPU) == setup.config.n_gpu_layers - 1
