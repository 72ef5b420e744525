"""MixDesk's exceptions and the one table that turns any exception into a sentence for the user.

Every error a user can meet is either a :class:`MixdeskError` (whose text is already the
sentence to show) or a library/OS exception that :func:`user_message` maps to one. Front
ends (the terminal commands, the GUI's message channel) call :func:`user_message` and never
format exceptions themselves.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class MixdeskError(Exception):
    """Base of all MixDesk errors. ``str(err)`` is one sentence saying what happened and what to do."""


class InvalidArgumentError(MixdeskError):
    """A setting or command-line value that makes no sense."""


class ModelNotFoundError(MixdeskError):
    """The model file does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"Model file not found: {path}. Check the path, or download a model first."
        )
        self.path = path


class ModelLoadError(MixdeskError):
    """llama.cpp could not load a model file (base of the specific load failures)."""


class NotAGgufError(ModelLoadError):
    """The file is not a GGUF model at all."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not a GGUF model file (it does not start with the GGUF signature); "
            "pick a .gguf file."
        )
        self.path = path


class NotARegularFileError(NotAGgufError):
    """The path names a FIFO, a device, a socket or a folder: refused before anything reads it
    (opening a FIFO would wait for a writer forever)."""

    def __init__(self, path: str, kind: str) -> None:
        MixdeskError.__init__(self, f"{path} is {kind}, not a model file; pick a .gguf file.")
        self.path = path
        self.kind = kind


class CorruptModelError(ModelLoadError):
    """The file is a GGUF but damaged (truncated, bad header, broken vocabulary)."""


class UnsupportedArchitectureError(ModelLoadError):
    """The installed llama.cpp does not know the model's architecture."""


class LegacyLayoutError(ModelLoadError):
    """A Mixtral file with one tensor per expert (TheBloke, December 2023) that llama.cpp no longer reads."""


class OutOfMemoryError(ModelLoadError):
    """Not enough RAM or VRAM to load the model with the chosen settings."""


class DeviceOutOfMemoryError(OutOfMemoryError):
    """A GPU (or other offload device) could not allocate a buffer: fewer GPU layers may fit.

    Attributes:
        device: the backend's device name as llama.cpp logs it (``CUDA0``, ``RPC0[host:port]``).
        buffer: what the failed buffer was for (``model``, ``KV``, ``compute``), if known.
        requested_bytes: the size llama.cpp could not allocate (0 if not logged).
    """

    def __init__(
        self, message: str, *, device: str = "", buffer: str = "", requested_bytes: int = 0
    ) -> None:
        super().__init__(message)
        self.device = device
        self.buffer = buffer
        self.requested_bytes = requested_bytes


class HostOutOfMemoryError(OutOfMemoryError):
    """RAM ran out (a CPU buffer, a mapped file, or the system killed the engine): fewer GPU
    layers would make it worse, never better."""


class EngineError(MixdeskError):
    """The engine process failed outside a model load."""


class EngineCrashedError(EngineError):
    """The engine process died (llama.cpp abort, segfault, killed, out of memory)."""

    def __init__(self, message: str, *, returncode: int | None, log_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


class DeviceOutOfMemoryCrashError(EngineCrashedError):
    """The engine died of a GPU out-of-memory (e.g. CUDA's abort on the first long prompt):
    like :class:`DeviceOutOfMemoryError`, fewer GPU layers may fit."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None,
        log_tail: str = "",
        device: str = "",
        requested_bytes: int = 0,
    ) -> None:
        super().__init__(message, returncode=returncode, log_tail=log_tail)
        self.device = device
        self.requested_bytes = requested_bytes


class WorkerError(MixdeskError):
    """A MixDesk worker (another machine's GPU, served by ``mixdesk worker``) cannot be used.

    Attributes:
        endpoint: the worker's ``host:port``.
    """

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


class WorkerUnreachableError(WorkerError):
    """Nothing answers at the worker's address (checked before llama.cpp connects, since a
    refused connection would abort the engine)."""


class WorkerVersionError(WorkerError):
    """The worker runs another MixDesk or llama-cpp-python version than this machine."""


class NotAWorkerError(WorkerError):
    """Something answers at the address, but not MixDesk's handshake (llama.cpp's own
    ``rpc-server``, or another program)."""


class WorkerBusyError(WorkerError):
    """The worker already serves another MixDesk (llama.cpp serves one client at a time)."""


class WorkerAuthError(WorkerError):
    """The worker and this machine do not share the worker secret (or this machine has none):
    the worker answers nothing else until a client proves it holds the secret."""


class WorkerFingerprintError(WorkerError):
    """The worker's TLS certificate is not the one this machine pinned on first use."""


class WorkerLostError(EngineCrashedError):
    """A worker went away while the engine used it: llama.cpp ended the engine with it."""

    def __init__(
        self, message: str, *, returncode: int | None, log_tail: str = "", endpoint: str = ""
    ) -> None:
        super().__init__(message, returncode=returncode, log_tail=log_tail)
        self.endpoint = endpoint


class EngineBusyError(EngineError):
    """A request came while the engine was still answering another one."""


class NoModelLoadedError(EngineError):
    """A chat was asked of an engine that has no model loaded."""


class ContextOverflowError(EngineError):
    """The conversation no longer fits in the model's context window."""


class ChatTemplateError(MixdeskError):
    """The model's chat template could not turn the conversation into a prompt."""


class TemplateRenderError(ChatTemplateError):
    """The template rejected this conversation (``raise_exception``) or failed while rendering it."""


class TemplateBudgetError(ChatTemplateError):
    """The template took too long or wrote too much: broken or hostile, stopped before it hangs."""


class TemplateSyntaxBrokenError(ChatTemplateError):
    """The template does not parse; MixDesk falls back to a built-in template."""


class TemplateCancelledError(ChatTemplateError):
    """The answer was stopped while its prompt was still being rendered."""


class CalibrationError(MixdeskError):
    """Measuring this machine's speed failed or could not be trusted."""


class CalibrationNoisyError(CalibrationError):
    """The machine was too busy while it was measured: the fit missed its own check."""


# -- across the engine's process boundary ------------------------------------------------

#: Errors the engine process raises, by the code they cross the pipe with. An error crosses
#: as its nearest class here (a subclass not listed crosses as its parent); the client builds
#: the same class again with :func:`from_wire`.
WIRE_CODES: dict[type[MixdeskError], str] = {
    MixdeskError: "error",
    InvalidArgumentError: "invalid_argument",
    ModelNotFoundError: "model_not_found",
    ModelLoadError: "model_load",
    NotAGgufError: "not_a_gguf",
    NotARegularFileError: "not_a_regular_file",
    CorruptModelError: "corrupt_model",
    UnsupportedArchitectureError: "unsupported_architecture",
    LegacyLayoutError: "legacy_layout",
    OutOfMemoryError: "out_of_memory",
    DeviceOutOfMemoryError: "device_out_of_memory",
    HostOutOfMemoryError: "host_out_of_memory",
    EngineError: "engine",
    NoModelLoadedError: "no_model_loaded",
    ContextOverflowError: "context_overflow",
    ChatTemplateError: "chat_template",
    TemplateRenderError: "template_render",
    TemplateBudgetError: "template_budget",
    TemplateSyntaxBrokenError: "template_syntax",
    TemplateCancelledError: "template_cancelled",
    WorkerError: "worker",
    WorkerUnreachableError: "worker_unreachable",
    WorkerVersionError: "worker_version",
    NotAWorkerError: "not_a_worker",
    WorkerBusyError: "worker_busy",
    WorkerAuthError: "worker_auth",
    WorkerFingerprintError: "worker_fingerprint",
}


def wire_code(err: MixdeskError) -> str:
    """The code ``err`` crosses the engine's pipe with (its nearest class in :data:`WIRE_CODES`)."""
    for cls in type(err).__mro__:
        if cls in WIRE_CODES:
            return WIRE_CODES[cls]
    return WIRE_CODES[MixdeskError]


def from_wire(code: str, message: str, details: Mapping[str, object]) -> MixdeskError:
    """The error the engine reported, as the same class with the same sentence and fields
    (an unknown code, from a newer engine, is a plain :class:`MixdeskError`)."""
    cls = next((c for c, name in WIRE_CODES.items() if name == code), MixdeskError)
    text = {k: str(v) for k, v in details.items() if isinstance(v, str)}
    if cls is ModelNotFoundError:
        err: MixdeskError = ModelNotFoundError(text.get("path", ""))
    elif cls is NotARegularFileError:
        err = NotARegularFileError(text.get("path", ""), text.get("kind", "not a regular file"))
    elif cls is NotAGgufError:
        err = NotAGgufError(text.get("path", ""))
    elif cls is DeviceOutOfMemoryError:
        requested = details.get("requested_bytes", 0)
        err = DeviceOutOfMemoryError(
            message,
            device=text.get("device", ""),
            buffer=text.get("buffer", ""),
            requested_bytes=requested if isinstance(requested, int) else 0,
        )
    elif issubclass(cls, WorkerError):
        err = cls(message, endpoint=text.get("endpoint", ""))
    else:
        err = cls(message)
    err.args = (message,)  # the engine's own sentence, word for word
    return err


def _os_error_message(err: BaseException) -> str:
    assert isinstance(err, OSError)
    where = f": {err.filename}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"The disk is full{where}. Free some space and try again."
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"Permission denied{where}. Choose a folder you can write to."
    if err.errno == errno.ENOENT:
        return f"No such file or folder{where}. Check the path."
    if err.errno == errno.EISDIR:
        return f"Expected a file but found a folder{where}. Pick a file."
    return f"A file operation failed{where} ({err.strerror or err}). Check the path and try again."


#: Exception type -> sentence. Matched in order, so subclasses come before their parents.
ERROR_MESSAGES: list[tuple[type[BaseException], Callable[[BaseException], str]]] = [
    (MixdeskError, str),
    (KeyboardInterrupt, lambda _e: "Stopped."),
    (MemoryError, lambda _e: "MixDesk ran out of memory. Close other programs and try again."),
    (OSError, _os_error_message),
]


def user_message(err: BaseException) -> str:
    """Return the one sentence a user should see for ``err``.

    Args:
        err: any exception.

    Returns:
        A sentence saying what happened and, where known, what to do.
    """
    for exc_type, render in ERROR_MESSAGES:
        if isinstance(err, exc_type):
            return render(err)
    log.error("unexpected error", exc_info=err)
    name = type(err).__name__
    return f"Something unexpected went wrong ({name}: {err}). The log has the details."
