"""Every use of llama-cpp-python beyond its public ``Llama`` API, in one place.

MixDesk needs a few things llama-cpp-python 0.3.36 does not offer as API: the model and
context handles behind a ``Llama`` (for llama.cpp's own counters and the abort callback),
model parameters with a progress callback, llama.cpp's device list with free memory, and its
RPC backend (a real offload device, and the way to pool GPUs of other machines). They reach
into private attributes and into the ggml libraries shipped inside the wheel, so they are tied
to the pinned version: :func:`check_compatible` (run by the test suite, and by the engine when
it starts) fails loudly, naming what changed, when the installed llama-cpp-python differs.

Only the engine process and the RPC server process import this module (it loads llama.cpp).
What the engine makes of the device list (free memory per buffer name, local GPUs, workers
registered as RPC devices) is :mod:`mixdesk.core.engine.devices`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as low

#: The llama-cpp-python version this adapter (and the planner's accounting) was checked against.
PINNED_VERSION = "0.3.36"

#: ggml_backend_dev_type values.
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU, DEVICE_ACCEL = 0, 1, 2, 3
_DEVICE_KINDS = {DEVICE_CPU: "cpu", DEVICE_GPU: "gpu", DEVICE_IGPU: "igpu", DEVICE_ACCEL: "accel"}


NO_RPC_BACKEND = "this llama-cpp-python build has no RPC backend (build it with -DGGML_RPC=ON)"


class AdapterError(RuntimeError):
    """The installed llama-cpp-python is not the one this adapter was written for."""


def _lib_dir() -> Path:
    return Path(llama_cpp.__file__).resolve().parent / "lib"


def _open(name: str) -> ctypes.CDLL:
    """A ggml library shipped in llama_cpp/lib, by its soname: the instance llama_cpp loaded."""
    path = _lib_dir() / name
    if not path.exists():
        raise AdapterError(f"{path} is missing from the installed llama-cpp-python")
    return ctypes.CDLL(str(path), mode=getattr(os, "RTLD_GLOBAL", 0))


class _Ggml:
    """The ggml C functions MixDesk calls, with their C signatures."""

    def __init__(self) -> None:
        base = _open("libggml-base.so.0")
        ggml = _open("libggml.so.0")
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        self.dev_count = ggml.ggml_backend_dev_count
        self.dev_count.restype, self.dev_count.argtypes = sz, []
        self.dev_get = ggml.ggml_backend_dev_get
        self.dev_get.restype, self.dev_get.argtypes = vp, [sz]
        self.dev_by_type = ggml.ggml_backend_dev_by_type
        self.dev_by_type.restype, self.dev_by_type.argtypes = vp, [ctypes.c_int]
        self.register = ggml.ggml_backend_register
        self.register.restype, self.register.argtypes = None, [vp]
        self.dev_name = base.ggml_backend_dev_name
        self.dev_name.restype, self.dev_name.argtypes = ctypes.c_char_p, [vp]
        self.dev_description = base.ggml_backend_dev_description
        self.dev_description.restype, self.dev_description.argtypes = ctypes.c_char_p, [vp]
        self.dev_type = base.ggml_backend_dev_type
        self.dev_type.restype, self.dev_type.argtypes = ctypes.c_int, [vp]
        self.dev_memory = base.ggml_backend_dev_memory
        self.dev_memory.restype = None
        self.dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
        self.dev_buffer_type = base.ggml_backend_dev_buffer_type
        self.dev_buffer_type.restype, self.dev_buffer_type.argtypes = vp, [vp]
        self.rpc: ctypes.CDLL | None = None
        rpc_path = _lib_dir() / "libggml-rpc.so.0"
        if rpc_path.exists():
            rpc = _open("libggml-rpc.so.0")
            rpc.ggml_backend_rpc_add_server.restype = vp
            rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
            rpc.ggml_backend_rpc_start_server.restype = None
            rpc.ggml_backend_rpc_start_server.argtypes = [
                ctypes.c_char_p,
                ctypes.c_char_p,
                sz,
                sz,
                ctypes.POINTER(vp),
            ]
            self.rpc = rpc


_ggml: _Ggml | None = None


def ggml() -> _Ggml:
    """The ggml functions (opened once per process)."""
    global _ggml  # noqa: PLW0603 - one handle per process, opened on first use
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def check_compatible() -> None:
    """Fail loudly when llama-cpp-python is not the version, or lacks the internals, MixDesk uses.

    Raises:
        AdapterError: naming the version or the missing piece.
    """
    version = str(getattr(llama_cpp, "__version__", "unknown"))
    if version != PINNED_VERSION:
        raise AdapterError(
            f"llama-cpp-python {version} is installed, but MixDesk's engine adapter and planner "
            f"were checked against {PINNED_VERSION}; reinstall with `bash packaging/bootstrap.sh start`."
        )
    params = low.llama_model_default_params()
    for name in ("progress_callback", "no_alloc", "tensor_buft_overrides", "tensor_split"):
        if not hasattr(params, name):
            raise AdapterError(f"llama_model_params has no field {name!r} in this llama-cpp-python")
    for name in ("_model", "_ctx"):
        if name not in llama_cpp.Llama.__init__.__code__.co_names:
            raise AdapterError(f"Llama no longer keeps {name!r}; the engine adapter needs updating")
    import llama_cpp.llama_chat_format as formats

    if "Jinja2ChatFormatter" not in llama_cpp.Llama.__init__.__code__.co_names or not hasattr(
        formats, "Jinja2ChatFormatter"
    ):
        raise AdapterError("Llama no longer compiles templates with Jinja2ChatFormatter")
    ggml()


def check_server_compatible() -> None:
    """Fail loudly when llama-cpp-python's server no longer builds its model where
    :func:`serve_model_from` replaces it (run by ``mixdesk serve`` and the tests).

    Raises:
        AdapterError: naming the missing piece.
    """
    from llama_cpp.server import model as server_model

    proxy: Any = getattr(server_model, "LlamaProxy", None)
    loader = getattr(proxy, "load_llama_from_model_settings", None)
    init_names = proxy.__init__.__code__.co_names if proxy is not None else ()
    if loader is None or "load_llama_from_model_settings" not in init_names:
        raise AdapterError(
            "llama-cpp-python's server no longer loads models with "
            "LlamaProxy.load_llama_from_model_settings; the serve adapter needs updating"
        )


# -- a loaded Llama ---------------------------------------------------------------------


def model_handle(llm: Any) -> Any:
    """The ``_LlamaModel`` behind a ``Llama`` (vocab, special tokens, sizes)."""
    return llm._model


def context_pointer(llm: Any) -> Any:
    """The ``llama_context *`` behind a ``Llama`` (perf counters, abort callback)."""
    return llm._ctx.ctx


class _BuftOverride(ctypes.Structure):
    """``struct llama_model_tensor_buft_override { const char *pattern; buft; }``."""

    _fields_ = (("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p))


class TensorOverrides:
    """A NULL-terminated ``llama_model_tensor_buft_override`` array that puts tensors whose
    names match ``patterns`` (std::regex_search) in the CPU's buffers. Keep it alive for as
    long as the model it was loaded with (llama.cpp keeps the pointer)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [p.encode() for p in patterns]
        g = ggml()
        cpu = g.dev_buffer_type(g.dev_by_type(DEVICE_CPU))
        self.array = (_BuftOverride * (len(self.patterns) + 1))()
        for i, pattern in enumerate(self.patterns):
            self.array[i].pattern = pattern
            self.array[i].buft = cpu
        self.array[len(self.patterns)].pattern = None
        self.array[len(self.patterns)].buft = None

    @property
    def pointer(self) -> int:
        """The array's address, for ``llama_model_params.tensor_buft_overrides``."""
        return ctypes.addressof(self.array)


def exact_name_patterns(names: Sequence[str]) -> list[str]:
    """Patterns that match exactly the tensors ``names`` and no other, one per layer (llama.cpp
    builds a ``std::regex`` of every pattern for every tensor it places: few patterns load
    faster than one per tensor)."""
    by_layer: dict[str, list[str]] = {}
    for name in names:
        by_layer.setdefault(".".join(name.split(".")[:2]), []).append(name)
    return ["^(" + "|".join(_regex_literal(n) for n in group) + ")$" for group in by_layer.values()]


def _regex_literal(text: str) -> str:
    """``text`` as an ECMAScript regular expression (std::regex's default) matching only it."""
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)


@contextmanager
def model_params(
    *, progress: Any = None, no_alloc: bool = False, overrides: TensorOverrides | None = None
) -> Iterator[None]:
    """Make the next ``Llama(...)`` load with these extra model parameters.

    llama-cpp-python's ``Llama.__init__`` takes no progress callback, ``no_alloc`` or tensor
    buffer overrides, but builds its model parameters from ``llama_model_default_params()``
    just before loading; for the duration of the constructor we hand it defaults with ours
    filled in.
    """
    original = low.llama_model_default_params

    def with_ours() -> Any:
        params = original()
        if progress is not None:
            params.progress_callback = progress
        params.no_alloc = no_alloc
        if overrides is not None and overrides.patterns:
            params.tensor_buft_overrides = overrides.pointer
        return params

    low.llama_model_default_params = with_ours
    try:
        yield
    finally:
        low.llama_model_default_params = original


class _UnusedChatFormatter:
    """Stands in for llama-cpp-python's template formatter while a model loads.

    ``Llama.__init__`` compiles every chat template in the file with its own Jinja
    environment, so a template that does not parse fails the whole load ("Unexpected end of
    template"). MixDesk never uses those formatters: it renders prompts itself, within a
    budget, with a fallback for broken templates (:mod:`mixdesk.core.chat.template`).
    """

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def to_chat_handler(self) -> Any:
        return None


@contextmanager
def without_chat_formatters() -> Iterator[None]:
    """Keep llama-cpp-python from compiling the model's chat templates while it loads."""
    import llama_cpp.llama_chat_format as formats

    original = formats.Jinja2ChatFormatter
    formats.Jinja2ChatFormatter = _UnusedChatFormatter  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        formats.Jinja2ChatFormatter = original  # type: ignore[misc]


def serve_model_from(load: Callable[[], Any]) -> None:
    """Make llama-cpp-python's server use the ``Llama`` that ``load`` returns instead of
    building one from its ``ModelSettings`` (which lack op offload, tensor overrides and the
    progress of MixDesk's own load): ``mixdesk serve`` loads through the engine's session.
    For the server's process only (it stays so)."""
    from llama_cpp.server import model as server_model

    check_server_compatible()

    def from_settings(_settings: Any) -> Any:
        return load()

    server_model.LlamaProxy.load_llama_from_model_settings = staticmethod(from_settings)  # type: ignore[method-assign,assignment]


# -- devices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendDevice:
    """A device llama.cpp can place layers on, as its backend registry reports it."""

    name: str  # "CUDA0", "RPC0", "CPU"
    description: str  # the GPU's name, or "127.0.0.1:50052" for an RPC server
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free_bytes: int
    total_bytes: int

    @property
    def is_rpc(self) -> bool:
        """Whether this is a remote (RPC) device."""
        return self.name.startswith("RPC")


def backend_devices() -> list[BackendDevice]:
    """Every device registered with ggml, in llama.cpp's order."""
    g = ggml()
    found = []
    for i in range(g.dev_count()):
        dev = g.dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        g.dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            BackendDevice(
                name=(g.dev_name(dev) or b"").decode(errors="replace"),
                description=(g.dev_description(dev) or b"").decode(errors="replace"),
                kind=_DEVICE_KINDS.get(g.dev_type(dev), "other"),
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return found


def register_rpc_server(address: str, *, endpoint: str) -> None:
    """Register the llama.cpp RPC server at ``address`` as a device (``endpoint``: the worker
    it reaches, named in the error).

    Raises:
        AdapterError: this llama.cpp build has no RPC backend, or llama.cpp refused the server.
    """
    g = ggml()
    if g.rpc is None:
        raise AdapterError(NO_RPC_BACKEND)
    reg = g.rpc.ggml_backend_rpc_add_server(address.encode())
    if not reg:
        raise AdapterError(f"llama.cpp refused the RPC server {endpoint}")
    g.register(reg)


def rpc_device(name: str | None = None) -> BackendDevice:
    """The device an RPC server offers: the one named (``CUDA1``, ``CPU``), else this
    machine's first GPU, else its CPU.

    Raises:
        AdapterError: no device has that name (the message lists the ones there are).
    """
    devices = [d for d in backend_devices() if not d.is_rpc]
    if name:
        for d in devices:
            if d.name.lower() == name.lower():
                return d
        names = ", ".join(d.name for d in devices)
        raise AdapterError(f"there is no device {name!r} here; the devices are {names}")
    gpus = [d for d in devices if d.kind in ("gpu", "igpu")]
    return gpus[0] if gpus else next(d for d in devices if d.kind == "cpu")


def serve_rpc(
    endpoint: str, *, threads: int, cache_dir: str | None = None, device: str | None = None
) -> None:
    """Serve ``device`` (default: this machine's first GPU, or its CPU) to llama.cpp RPC
    clients; never returns.

    Raises:
        AdapterError: this llama.cpp build has no RPC backend, or no such device.
    """
    g = ggml()
    if g.rpc is None:
        raise AdapterError(NO_RPC_BACKEND)
    wanted = rpc_device(device).name
    chosen = None
    for i in range(g.dev_count()):
        dev = g.dev_get(i)
        if (g.dev_name(dev) or b"").decode() == wanted:
            chosen = dev
            break
    device_ptr = chosen if chosen is not None else g.dev_by_type(DEVICE_CPU)
    devices = (ctypes.c_void_p * 1)(device_ptr)
    g.rpc.ggml_backend_rpc_start_server(
        endpoint.encode(),
        cache_dir.encode() if cache_dir else None,
        threads,
        1,
        devices,
    )
