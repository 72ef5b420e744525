"""Workers: `mixdesk worker` child processes on loopback lend their device to `mixdesk chat`,
`plan` and the engine; handshake, versions, network figures and a worker lost mid-answer.

Every worker here is a real `mixdesk worker` process (llama.cpp's RPC server over the CPU
behind MixDesk's front), and every load a real engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk import __version__
from mixdesk.core.engine import Engine, LoadConfig
from mixdesk.core.engine.diagnose import buffer_sizes
from mixdesk.core.engine.protocol import BufferKind
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import load_model
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.machine import rpc_worker
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from mixdesk.errors import (
    NotAWorkerError,
    WorkerBusyError,
    WorkerUnreachableError,
    WorkerVersionError,
)
from tests.helpers.mixdesk_workers import WorkerProcess
from tests.helpers.net import free_port


def mixdesk(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the `mixdesk` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "mixdesk", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def local_machine() -> HardwareInfo:
    return HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=16 * GIB,
        physical_cores=1,
        logical_cores=1,
        gpu_offload=False,
    )


# -- item 1: the worker ---------------------------------------------------------------


def test_worker_says_what_it_offers_and_answers_the_handshake(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    out = worker.output()
    assert "offering CPU" in out and "free of" in out and worker.endpoint in out
    assert "warning" not in out  # loopback: nothing to warn about
    info = rpc_worker.probe(worker.endpoint)
    assert (info.mixdesk_version, info.llama_cpp_version) == rpc_worker.local_versions()
    assert info.device == "CPU" and info.free_bytes > 0 and info.total_bytes >= info.free_bytes
    assert info.link_bytes_per_s > 0 and not info.busy
    assert info.cache_bytes == 20 << 30  # the default cap; no path crosses the wire


def test_worker_on_every_interface_says_it_takes_tls_and_the_secret(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers(host="0.0.0.0")  # reached via 127.0.0.1 only
    out = worker.output()
    port = worker.endpoint.rsplit(":", 1)[1]
    assert "listening on 0.0.0.0: other machines reach it over TLS, and only with the secret" in out
    assert f"--worker {socket.gethostname()}:{port}" in out
    assert rpc_worker.probe_in_child(worker.endpoint, speed=False).device == "CPU"


# -- item 2: --worker on chat and plan, layers on both devices --------------------------


def test_chat_with_two_workers_answers_with_layers_on_both_as_planned(
    models: dict[str, Path], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    a, b = workers(), workers()
    done = mixdesk(
        "chat",
        str(models["q4_k_m"]),
        "--worker",
        a.endpoint,
        "--worker",
        b.endpoint,
        "--ngl",
        "all",
        "--prompt",
        "Hello",
        "--max-tokens",
        "8",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] and result["n_gpu_layers"] == 5
    planned = {d["buffer_name"]: d for d in result["devices"]}
    assert set(planned) >= {f"RPC0[{a.endpoint}]", f"RPC0[{b.endpoint}]"}
    # llama.cpp's own log (the engine log in the user's log folder) has both devices' buffers.
    logs = sorted(Path(os.environ["XDG_STATE_HOME"]).rglob("engine-*.log"))
    logged = buffer_sizes(logs[-1].read_text())
    for endpoint in (a.endpoint, b.endpoint):
        device = planned[f"RPC0[{endpoint}]"]
        assert device["layers"] or device["output"]
        for what, key in ((BufferKind.MODEL, "weights_bytes"), (BufferKind.KV, "kv_bytes")):
            real = logged.size(f"RPC0[{endpoint}]", what)
            assert real > 0
            assert abs(device[key] - real) <= max(0.01 * real, 6000), (endpoint, what)
        assert device["send_bytes"] == device["weights_bytes"]
    # Both workers received their weights through their fronts.
    for worker in (a, b):
        assert rpc_worker.stats(worker.endpoint).received_bytes > 0


def test_plan_states_bytes_and_time_to_send_each_worker(
    models: dict[str, Path], workers: Callable[..., WorkerProcess]
) -> None:
    a = workers()
    done = mixdesk("plan", str(models["q4_k_m"]), "--worker", a.endpoint, "--ngl", "all", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    device = next(d for d in plan["devices"] if d["buffer_name"] == f"RPC0[{a.endpoint}]")
    assert device["send_bytes"] == device["weights_bytes"] > 0
    assert device["send_seconds"] is not None and device["send_seconds"] > 0
    text = " ".join(plan["explanation"])
    assert "Loading sends" in text and a.endpoint in text
    assert re.search(r"\d (MiB|GiB)/s measured", text), text  # one unit system, sizes' own
    assert "so loading this model again sends only their hashes" in text
    assert "kilobytes per token" in text
    assert "not used: this llama.cpp build is CPU-only" not in text


# -- item 4: failures -------------------------------------------------------------------


def test_unreachable_worker_is_named_by_the_cli_and_the_engine(
    models: dict[str, Path], engine: Engine
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    done = mixdesk("chat", str(models["q4_k_m"]), "--worker", nobody, "--prompt", "Hi")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"mixdesk: The worker at {nobody} cannot be reached (Connection refused); start "
        "`mixdesk worker` there, check the address and port, or remove it."
    )
    # The engine checks before llama.cpp connects (which would abort it): it stays alive.
    hw = local_machine()
    hw = replace(hw, gpus=[GpuInfo("gone", "rpc", GIB, GIB, endpoint=nobody)])
    with pytest.raises(WorkerUnreachableError, match=nobody):
        load_model(
            engine, LoadRequest(resolve_file(models["q4_k_m"]), hw, LoadChoices(n_gpu_layers=-1))
        )
    assert engine.alive


def test_worker_with_other_versions_is_refused_naming_both(
    models: dict[str, Path], workers: Callable[..., WorkerProcess], engine: Engine
) -> None:
    other = workers(python_prelude="import mixdesk\nmixdesk.__version__ = '0.0.9'")
    done = mixdesk("plan", str(models["q4_k_m"]), "--worker", other.endpoint)
    assert done.returncode == 1
    llama = rpc_worker.local_versions()[1]
    assert done.stderr.strip() == (
        f"mixdesk: The worker at {other.endpoint} runs MixDesk 0.0.9 with llama-cpp-python "
        f"{llama}, but this machine runs MixDesk {__version__} with llama-cpp-python {llama}; "
        "install the same versions on both."
    )
    hw = replace(local_machine(), gpus=[GpuInfo("other", "rpc", GIB, GIB, endpoint=other.endpoint)])
    with pytest.raises(WorkerVersionError, match=r"MixDesk 0\.0\.9 with"):
        load_model(
            engine, LoadRequest(resolve_file(models["q4_k_m"]), hw, LoadChoices(n_gpu_layers=-1))
        )
    assert engine.alive


def test_a_worker_in_use_is_busy_for_a_second_engine(
    models: dict[str, Path], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    a = workers()
    hw = rpc_worker.probe_in_child(a.endpoint)
    machine = replace(local_machine(), gpus=[hw.as_gpu()])
    request = LoadRequest(resolve_file(models["q4_k_m"]), machine, LoadChoices(n_gpu_layers=-1))
    with Engine(log_dir=tmp_path / "one") as first, Engine(log_dir=tmp_path / "two") as second:
        load_model(first, request)
        assert rpc_worker.hello(a.endpoint).busy  # asked of the front, never of llama.cpp
        with pytest.raises(WorkerBusyError, match=a.endpoint):
            load_model(second, request)
        assert second.alive and first.alive


def test_worker_killed_mid_answer_ends_it_with_one_sentence(
    models: dict[str, Path], workers: Callable[..., WorkerProcess]
) -> None:
    a, b = workers(), workers()
    chat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "chat",
            str(models["q4_k_m"]),
            "--worker",
            a.endpoint,
            "--worker",
            b.endpoint,
            "--ngl",
            "all",
            "--ctx",
            "32768",
            "--max-tokens",
            "0",
            "--prompt",
            "Tell me a long story.",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert chat.stdout is not None
    first = chat.stdout.read(16)  # the answer is streaming
    assert first
    b.kill()
    rest, err = chat.communicate(timeout=60)
    assert chat.returncode == 1
    assert (first + rest).startswith(first)  # what was answered stays on the screen
    last = err.strip().splitlines()[-1]
    assert last == (
        f"mixdesk: The worker at {b.endpoint} went away while answering, which ended the "
        "engine; load the model again without that worker, or restart `mixdesk worker` there."
    )


def test_serve_with_a_worker_answers_from_it(
    models: dict[str, Path], workers: Callable[..., WorkerProcess]
) -> None:
    import urllib.request

    a = workers()
    port = free_port()
    serve = subprocess.Popen(
        [
            *(sys.executable, "-m", "mixdesk", "serve", str(models["q4_k_m"])),
            *("--port", str(port), "--worker", a.endpoint, "--ngl", "all", "--ctx", "1024"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        for line in serve.stderr:  # "mixdesk: serving ... at http://127.0.0.1:PORT/v1"
            if "serving" in line:
                break
        body = json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["content"]
        stats = rpc_worker.stats(a.endpoint)
        assert stats.active and stats.received_bytes > 0  # the server's llama.cpp uses the worker
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)


def test_a_plain_llama_cpp_rpc_server_is_refused_before_connecting(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """llama.cpp's own RPC server has no MixDesk handshake, so its versions cannot be checked:
    the engine refuses it with one sentence instead of letting llama.cpp connect."""
    port = free_port()
    code = (
        "from mixdesk.core.engine import llama_adapter; "
        f"llama_adapter.serve_rpc('127.0.0.1:{port}', threads=1)"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                break
            time.sleep(0.1)
        config = LoadConfig(
            str(models["q4_k_m"]), n_gpu_layers=2, rpc_servers=(f"127.0.0.1:{port}",)
        )
        with (
            Engine(log_dir=tmp_path) as engine,
            pytest.raises(NotAWorkerError, match=rf"127\.0\.0\.1:{port}"),
        ):
            engine.load(config)
    finally:
        server.kill()
        server.wait()
