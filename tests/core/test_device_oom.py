"""A real out-of-memory on an offload device, and the bounded retry with fewer layers.

The device is a loopback llama.cpp RPC server whose process has an address-space limit
(RLIMIT_AS) a little above what it uses idle: llama.cpp really fails to allocate its buffers
there, as on a GPU that is full.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import MAX_LOAD_TRIES, load_model
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.machine.hardware import MIB
from mixdesk.errors import DeviceOutOfMemoryError, HostOutOfMemoryError
from tests.conftest import OOM_SHAPE
from tests.helpers.devices import CountingEngine, Servers, device_hardware
from tests.helpers.limits import limit_address_space, use_headroom
from tests.helpers.mixdesk_workers import start_worker

BUDGET = 48 * MIB


def test_device_out_of_memory_is_typed(
    oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    server = rpc_servers(BUDGET)
    request = LoadRequest(
        resolve_file(oom_model), device_hardware(server), LoadChoices(n_gpu_layers=-1, n_ctx=512)
    )
    with Engine(log_dir=tmp_path) as engine, pytest.raises(DeviceOutOfMemoryError) as caught:
        load_model(engine, request, retry=False)
    err = caught.value
    assert err.device == f"RPC0[{server.endpoint}]"
    assert err.buffer == "model"
    assert err.requested_bytes > BUDGET
    assert "does not fit in GPU memory" in str(err)


def test_device_out_of_memory_retries_with_fewer_layers(
    oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    server = rpc_servers(BUDGET)
    request = LoadRequest(
        resolve_file(oom_model), device_hardware(server), LoadChoices(n_gpu_layers=-1, n_ctx=512)
    )
    engine = CountingEngine(log_dir=tmp_path)
    with engine:
        outcome = load_model(engine, request)
        # the address-space budget also counts what the worker maps on the host (a thread
        # stack for each engine that connected, a graph's deserialisation), which a GPU's
        # memory does not: once loaded, the answer gets room for that (it died there in one
        # run of many), and checks that the retried setting works
        use_headroom(server.proc.pid)
        assert engine.chat([ChatMessage("user", "Hello")]).wait().stats.eval_tokens > 0
    assert engine.loads[0] == OOM_SHAPE.n_layers + 1
    assert 1 <= len(engine.loads) <= MAX_LOAD_TRIES
    assert engine.loads == sorted(engine.loads, reverse=True)
    assert 0 < outcome.info.n_gpu_layers < OOM_SHAPE.n_layers + 1
    assert outcome.info.n_gpu_layers == outcome.setup.config.n_gpu_layers
    assert outcome.note.startswith(
        f"n_gpu_layers {OOM_SHAPE.n_layers + 1} did not fit in GPU memory"
    )
    assert outcome.setup.plan.placement_words in outcome.note


def test_a_retry_keeps_every_choice_but_the_layer_count(
    oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    """After Keep fastest chose op offload off, two threads and a smaller batch, a device
    out-of-memory retries with fewer layers and nothing else changed (the retry used to
    rebuild the choices from the config and drop the measured op offload)."""
    server = rpc_servers(BUDGET)
    kept = LoadChoices(n_gpu_layers=-1, n_ctx=512, op_offload=False, n_threads=2, n_batch=256)
    request = LoadRequest(resolve_file(oom_model), device_hardware(server), kept)
    engine = CountingEngine(log_dir=tmp_path)
    with engine:
        outcome = load_model(engine, request)
    first, *retries = engine.configs
    assert retries, "the device did not run out of memory"
    for config in retries:
        assert config.n_gpu_layers < first.n_gpu_layers
        assert (config.op_offload, config.n_threads, config.n_batch) == (False, 2, 256)
        assert config.n_ctx == first.n_ctx
    assert outcome.setup.choices.op_offload is False


def test_ram_failure_never_lowers_gpu_layers(
    oom_model: Path, rpc_servers: Servers, tmp_path: Path
) -> None:
    """The engine itself (host RAM) under a limit: a CPU buffer fails, and MixDesk does not
    retry with fewer GPU layers (that would need more RAM, not less)."""
    server = rpc_servers()
    limited = [
        sys.executable,
        "-c",
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
        "from mixdesk.core.engine.process import main; raise SystemExit(main())",
    ]
    engine = CountingEngine(log_dir=tmp_path, command=limited)
    request = LoadRequest(
        resolve_file(oom_model), device_hardware(server), LoadChoices(n_gpu_layers=2, n_ctx=1 << 20)
    )
    with engine, pytest.raises(HostOutOfMemoryError, match="not enough RAM"):
        load_model(engine, request)
    assert engine.loads == [2]


def test_chat_command_retries_a_device_out_of_memory(oom_model: Path, tmp_path: Path) -> None:
    """`mixdesk chat --worker ... --ngl all` on a worker whose device is really too small: it
    loads fewer layers, says so in one line, and answers."""
    worker = start_worker(tmp_path, "--no-cache")
    try:
        limit_address_space(worker.proc.pid, BUDGET)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mixdesk",
                "chat",
                str(oom_model),
                "--worker",
                worker.endpoint,
                "--ngl",
                "all",
                "--ctx",
                "512",
                "--prompt",
                "Hello",
                "--max-tokens",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        worker.kill()
    assert proc.returncode == 0, proc.stderr[-2000:]
    everything = OOM_SHAPE.n_layers + 1
    note = f"mixdesk: n_gpu_layers {everything} did not fit in GPU memory, so MixDesk loaded "
    assert note in proc.stderr
    assert "layers + output on GPU." in proc.stderr.split(note, 1)[1].splitlines()[0]
    assert proc.stdout.strip()  # it answered
