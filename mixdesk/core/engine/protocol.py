"""What the app and the engine process say to each other: dataclasses sent as JSON lines.

The app writes commands to the engine's stdin, one JSON object a line; the engine answers
with events on a private copy of its stdout. llama.cpp's own log goes to the engine's stderr,
which the app points at a log file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from mixdesk.core.chat_template import ChatMessage

#: KV cache types a user can pick, as llama.cpp names them.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
#: Their ggml_type values (what llama.cpp's type_k / type_v take).
KV_TYPE_IDS = {"f16": 1, "q8_0": 8, "q4_0": 2}


def physical_cores() -> int:
    """The default thread count: physical cores (llama.cpp gains nothing from hyperthreads)."""
    import os

    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model. ``n_gpu_layers=-1`` puts every layer on the GPU."""

    model_path: str
    n_gpu_layers: int = 0
    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    #: Buffer sizes llama.cpp logged while loading, e.g. {"CPU KV": bytes, "CUDA0 model": bytes}.
    buffers: dict[str, int] = field(default_factory=dict)
    use_mmap: bool = True
    #: llama.cpp's op offload (copy CPU weights to the GPU for big batches); None: its default.
    op_offload: bool | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one answer (llama.cpp's names and meanings)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    #: Tokens to generate at most; 0 or less means "until the context is full".
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What the engine process reports when it starts."""

    pid: int
    llama_cpp_version: str
    supports_gpu_offload: bool
    system_info: str


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model, as llama.cpp sees it."""

    path: str
    name: str
    architecture: str
    n_layers: int
    n_gpu_layers: int
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    n_params: int
    size_bytes: int
    chat_template_source: str
    system_prompt_folded: bool
    load_s: float
    n_threads: int
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    #: Buffer sizes llama.cpp logged while loading, e.g. {"CPU KV": bytes, "CUDA0 model": bytes}.
    buffers: dict[str, int] = field(default_factory=dict)
    #: Why a built-in chat template stands in for the model's own (empty when it does not).
    chat_template_note: str = ""


@dataclass(frozen=True)
class PerfCounters:
    """llama.cpp's own counters (``llama_perf_context``) for the current answer."""

    t_p_eval_ms: float = 0.0
    n_p_eval: int = 0
    t_eval_ms: float = 0.0
    n_eval: int = 0


@dataclass(frozen=True)
class GenerationStats:
    """Speed figures of an answer, live while it streams and final at its end.

    ``prompt_tps`` and ``eval_tps`` are llama.cpp's prompt eval and eval (generation) speeds,
    computed from its own counters as ``llama_perf_context_print`` does; ``eval_tokens`` counts
    the tokens generated so far.
    """

    prompt_tokens: int = 0
    prompt_eval_tokens: int = 0
    prompt_tps: float = 0.0
    eval_tokens: int = 0
    eval_tps: float = 0.0
    ttft_s: float = 0.0
    elapsed_s: float = 0.0
    context_used: int = 0
    context_size: int = 0
    perf: PerfCounters = field(default_factory=PerfCounters)


@dataclass(frozen=True)
class LoadProgress:
    """Model load progress, 0..1."""

    fraction: float


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, with the speed figures at that moment."""

    request_id: int
    text: str
    stats: GenerationStats
    #: ``time.monotonic_ns()`` in the engine when sent (to measure the IPC cost).
    sent_ns: int = 0


@dataclass(frozen=True)
class ChatDone:
    """The end of an answer: ``finish_reason`` is "stop", "length" or "cancelled"."""

    request_id: int
    text: str
    finish_reason: str
    stats: GenerationStats


@dataclass(frozen=True)
class EngineFailure:
    """An error the engine reports without dying. ``kind`` names a MixdeskError class."""

    kind: str
    message: str
    request_id: int = 0


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, ignoring unknown keys (newer peers)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is GenerationStats and isinstance(kwargs.get("perf"), dict):
        kwargs["perf"] = from_dict(PerfCounters, kwargs["perf"])
    if cls in (TextDelta, ChatDone) and isinstance(kwargs.get("stats"), dict):
        kwargs["stats"] = from_dict(GenerationStats, kwargs["stats"])
    if cls is SamplingParams and "stop" in kwargs:
        kwargs["stop"] = tuple(kwargs["stop"])
    return cls(**kwargs)


def encode(kind: str, payload: Any = None, **extra: Any) -> bytes:
    """Encode one message (a dataclass payload and/or extra fields) as a JSON line."""
    body: dict[str, Any] = {"type": kind}
    if payload is not None:
        body.update(asdict(payload))
    body.update(extra)
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")


def messages_to_wire(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Turn chat messages into plain dicts for JSON."""
    return [{"role": m.role, "content": m.content} for m in messages]


def messages_from_wire(items: list[dict[str, str]]) -> list[ChatMessage]:
    """Turn JSON dicts back into chat messages."""
    return [ChatMessage(role=str(i["role"]), content=str(i["content"])) for i in items]


def encode_delta(request_id: int, text: str, stats: GenerationStats) -> bytes:
    """Encode a text delta: the hot path, one per streamed update, so built by hand."""
    perf = stats.perf
    body = {
        "type": "delta",
        "request_id": request_id,
        "text": text,
        "sent_ns": time.monotonic_ns(),
        "stats": {
            "prompt_tokens": stats.prompt_tokens,
            "prompt_eval_tokens": stats.prompt_eval_tokens,
            "prompt_tps": stats.prompt_tps,
            "eval_tokens": stats.eval_tokens,
            "eval_tps": stats.eval_tps,
            "ttft_s": stats.ttft_s,
            "elapsed_s": stats.elapsed_s,
            "context_used": stats.context_used,
            "context_size": stats.context_size,
            "perf": {
                "t_p_eval_ms": perf.t_p_eval_ms,
                "n_p_eval": perf.n_p_eval,
                "t_eval_ms": perf.t_eval_ms,
                "n_eval": perf.n_eval,
            },
        },
    }
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")
