"""llama.cpp's devices as the engine uses them, on top of the adapter's device list.

:mod:`mixdesk.core.engine.llama_adapter` reaches into llama-cpp-python and the ggml
libraries; this module only uses what it returns: the free memory of each offload device by
the name llama.cpp gives its buffers, this machine's own GPUs, and registering MixDesk
workers as RPC devices (each checked by MixDesk's handshake first, and reached through the
engine's authenticated relay).
"""

from __future__ import annotations

from collections.abc import Sequence

from mixdesk.core.engine import llama_adapter, rpc_relay
from mixdesk.core.engine.llama_adapter import NO_RPC_BACKEND, AdapterError, BackendDevice


def offload_free_memory() -> dict[str, int]:
    """Free memory of every offload device, keyed by the name llama.cpp gives its buffers
    (``CUDA0``, ``RPC0[host:port]``), as the planner's ``DevicePlan.buffer_name``."""
    found = {}
    for d in llama_adapter.backend_devices():
        if d.kind == "cpu":
            continue
        found[f"RPC0[{rpc_relay.worker_of(d.description)}]" if d.is_rpc else d.name] = d.free_bytes
    return found


def local_gpus() -> list[BackendDevice]:
    """The GPUs of this machine llama.cpp can use (RPC devices excluded).

    With RPC compiled in, ``llama_supports_gpu_offload()`` is true on every machine, so
    whether this build can use a local GPU is read from the device list instead.
    """
    return [
        d for d in llama_adapter.backend_devices() if d.kind in ("gpu", "igpu") and not d.is_rpc
    ]


def add_rpc_servers(endpoints: Sequence[str]) -> None:
    """Register llama.cpp RPC servers (``host:port``) as devices, before a model loads.

    A registered device cannot be removed again: a load without them needs a new process.

    Raises:
        AdapterError: this llama.cpp build has no RPC backend.
        WorkerError: a worker is unreachable, busy or runs other versions (before llama.cpp
            connects, which would abort the process).
    """
    g = llama_adapter.ggml()
    if endpoints and g.rpc is None:
        raise AdapterError(NO_RPC_BACKEND)
    from mixdesk.core.machine.rpc_worker import check_before_connecting

    for endpoint in endpoints:
        # llama.cpp aborts this process on a refused connection or a version mismatch, and
        # hangs on a server busy with another client: MixDesk's handshake asks first.
        check_before_connecting(endpoint)
        # llama.cpp's client speaks plain TCP without the worker secret: it talks to a relay
        # in this process, which carries it to the worker authenticated (and over TLS).
        llama_adapter.register_rpc_server(rpc_relay.relay_for(endpoint), endpoint=endpoint)
