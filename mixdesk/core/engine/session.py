"""How a :class:`LoadConfig` becomes a ``llama_cpp.Llama``: the one load path of the engine
process and of ``mixdesk serve``'s server process.

Both call :func:`register_devices` (RPC workers become llama.cpp devices before any load),
then :func:`open_llama` with the same :func:`llama_kwargs`: the same threads, context, KV cache,
flash attention, op offload, tensor split and tensor overrides, so a model served loads
exactly as a model chatted with. Everything that reaches past llama-cpp-python's public API
(progress callback, ``no_alloc``, tensor overrides, the chat formatters it compiles) goes
through :mod:`.llama_adapter`.

Imports llama_cpp: only the engine and server processes use this module.
"""

from __future__ import annotations

from typing import Any

from mixdesk.core.engine import devices, llama_adapter
from mixdesk.core.engine.protocol import KV_TYPE_IDS, LoadConfig
from mixdesk.core.machine.hardware import physical_cores


def register_devices(config: LoadConfig) -> None:
    """Make ``config``'s RPC workers llama.cpp devices (before loading; once per process)."""
    devices.add_rpc_servers(config.rpc_servers)


def llama_kwargs(config: LoadConfig) -> dict[str, Any]:
    """``Llama(...)`` arguments for ``config`` (the same for a load, its dry run and serve)."""
    n_threads = config.n_threads or physical_cores()
    return {
        "model_path": config.model_path,
        "n_gpu_layers": config.n_gpu_layers,
        "n_ctx": config.n_ctx,
        "n_threads": n_threads,
        "n_threads_batch": n_threads,
        "n_batch": config.n_batch,
        # llama.cpp refuses a quantised V cache without flash attention; turn it on instead.
        "flash_attn": config.flash_attn or config.type_v != "f16",
        "type_k": KV_TYPE_IDS[config.type_k],
        "type_v": KV_TYPE_IDS[config.type_v],
        "use_mmap": config.use_mmap,
        "op_offload": config.op_offload,
        "tensor_split": list(config.tensor_split) or None,
        "verbose": True,
    }


def tensor_overrides(config: LoadConfig) -> llama_adapter.TensorOverrides | None:
    """The tensor buffer overrides of ``config``: its tensors kept in RAM, by exact name."""
    if not config.cpu_tensors:
        return None
    return llama_adapter.TensorOverrides(llama_adapter.exact_name_patterns(config.cpu_tensors))


class OpenedModel:
    """A loaded ``Llama`` and what llama.cpp keeps pointers to while it lives."""

    def __init__(self, llm: Any, overrides: llama_adapter.TensorOverrides | None) -> None:
        self.llm = llm
        self._overrides = overrides  # llama.cpp keeps the pointer: alive with the model


def open_llama(
    config: LoadConfig, *, progress: Any = None, no_alloc: bool = False, **extra: Any
) -> OpenedModel:
    """Load ``config`` (``no_alloc``: a dry run that only reports buffer sizes).

    ``extra`` adds ``Llama`` arguments (``chat_format`` for the server). The model's own chat
    templates are not compiled: MixDesk renders prompts itself, within a budget.

    Raises:
        ValueError: llama.cpp could not load the model (its log says why).
    """
    import llama_cpp

    kwargs = {**llama_kwargs(config), **extra}
    if no_alloc:
        kwargs["use_mmap"] = False  # no_alloc needs llama.cpp's load mode "none"
    overrides = tensor_overrides(config)
    with (
        llama_adapter.model_params(progress=progress, no_alloc=no_alloc, overrides=overrides),
        llama_adapter.without_chat_formatters(),
    ):
        llm = llama_cpp.Llama(**kwargs)
    return OpenedModel(llm, overrides)
