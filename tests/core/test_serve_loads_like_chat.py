"""`mixdesk serve` loads a model exactly as the engine does (same LoadConfig, same buffers).

llama-cpp-python's server builds its own ``Llama`` from ``ModelSettings``, which has no op
offload and no tensor overrides; MixDesk passes them through the adapter. Checked on a real
offload device: experts of the first layers in RAM, the rest on the RPC device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mixdesk.core.engine import Engine, diagnose
from mixdesk.core.engine.protocol import BufferKind
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import plan_load
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.serving.serve import ServeConfig, start_server
from tests.helpers.devices import rpc_hardware
from tests.helpers.mixdesk_workers import WorkerProcess
from tests.helpers.net import free_port


def test_serve_places_tensors_like_the_engine(
    models: dict[str, Path], rpc_servers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    server = rpc_servers()
    choices = LoadChoices(n_ctx=1024, strategy="experts", experts_in_ram=2, use_mmap=False)
    setup = plan_load(
        resolve_file(models["q4_k_m"]), rpc_hardware(server), choices, calibration=Calibration()
    )
    assert setup.config.rpc_servers == (server.endpoint,)
    assert {int(name.split(".")[1]) for name in setup.config.cpu_tensors} == {0, 1}

    served = start_server(ServeConfig(load=setup.config, port=free_port()))
    try:
        served_buffers = diagnose.buffer_sizes(diagnose.read_tail(served.log_path, 1 << 20))
    finally:
        served.stop()  # an RPC server serves one client at a time
    with Engine(log_dir=tmp_path) as engine:
        engine_buffers = engine.load(setup.config).buffers

    device = f"RPC0[{server.endpoint}]"
    for kind in (BufferKind.MODEL, BufferKind.KV):
        assert served_buffers.get(device, kind) == engine_buffers.get(device, kind) is not None
    cpu = served_buffers.size("CPU", BufferKind.MODEL) + served_buffers.size(
        "CPU_REPACK", BufferKind.MODEL
    )
    assert abs(cpu - setup.plan.cpu.weights_bytes) <= 0.01 * setup.plan.cpu.weights_bytes
    assert abs(
        served_buffers.size(device, BufferKind.MODEL) - setup.plan.gpus[0].weights_bytes
    ) <= max(0.01 * setup.plan.gpus[0].weights_bytes, 6000)
