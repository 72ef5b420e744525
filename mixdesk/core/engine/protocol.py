"""What the app and the engine process say to each other: dataclasses sent as JSON lines.

The app writes commands (:class:`LoadCommand`, :class:`ChatCommand`, :class:`CancelCommand`,
:class:`ShutdownCommand`) to the engine's stdin, one JSON object a line; the engine answers
with events (:class:`LoadProgress`, :class:`ModelInfo`, :class:`TextDelta`, :class:`ChatDone`,
:class:`EngineFailure`) on a private copy of its stdout. llama.cpp's own log goes to the engine's stderr,
which the app points at a log file. This module declares the messages; how they are encoded
and decoded is :mod:`mixdesk.core.engine.wire`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from mixdesk.core.chat.context_window import OverflowPolicy
from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.chat.words import ended_at_once

#: Why an answer ended: end-of-text or a stop string, its token limit, the user's Stop, or a
#: failure that cut it short.
FinishReason = Literal["stop", "length", "cancelled", "error"]

#: Where an answer's prompt found its cached prefix: nowhere, the KV cache as the last answer
#: left it, a state kept in the engine's memory, or a state file on disk.
KvSource = Literal["none", "live", "memory", "disk"]

#: KV cache types a user can pick, as llama.cpp names them.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
#: Their ggml_type values (what llama.cpp's type_k / type_v take).
KV_TYPE_IDS = {"f16": 1, "q8_0": 8, "q4_0": 2}


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model, exactly as llama.cpp will be asked to.

    Built only by :func:`mixdesk.core.loading.service.plan_load`, from a model resolved and
    checked once (``model_path`` is the first part of a split model): the engine loads it as
    given. ``n_gpu_layers`` is llama.cpp's number: the output layer plus
    ``n_gpu_layers - 1`` repeating layers, 0 to n_layers + 1.
    """

    model_path: str
    n_gpu_layers: int = 0
    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    use_mmap: bool = True
    #: llama.cpp's op offload (copy CPU weights to the GPU for big batches); None: its default.
    op_offload: bool | None = None
    #: llama.cpp RPC servers ("host:port") registered as devices before loading, in order.
    rpc_servers: tuple[str, ...] = ()
    #: Layers per offload device, in llama.cpp's device order (empty: one device, or
    #: llama.cpp's own split by free memory). llama.cpp counts the output layer as a layer.
    tensor_split: tuple[float, ...] = ()
    #: Tensors kept in CPU RAM, by exact name ("blk.3.ffn_down_exps.weight"): the expert
    #: tensors the plan keeps there (tensor buffer overrides). The engine applies them as given.
    cpu_tensors: tuple[str, ...] = ()


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
    #: What to do when the conversation outgrows the context (``context_window.OVERFLOW_POLICIES``).
    overflow: OverflowPolicy = "drop_oldest"
    #: Keep generating past end-of-text (llama.cpp's ``--ignore-eos``): speed measurements
    #: generate a fixed number of tokens, as llama-bench does.
    ignore_eos: bool = False


class BufferKind(str, Enum):
    """What one of llama.cpp's buffers holds (a ``str``: it serialises as its value, the word
    llama.cpp's log uses)."""

    MODEL = "model"  # weights
    KV = "KV"  # the KV cache
    COMPUTE = "compute"  # the graph allocator's working memory
    OUTPUT = "output"  # logits and embeddings
    RS = "RS"  # recurrent state (not in Mixtral-class models)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Buffer:
    """One buffer llama.cpp allocated, as its log reports it (a split model's per-file
    buffers summed)."""

    #: llama.cpp's name for the device: "CUDA0", "RPC0[host:port]", "CPU", "CPU_Mapped"...
    device: str
    kind: BufferKind
    bytes: int


@dataclass(frozen=True)
class Buffers:
    """The buffers of one load, looked up by device and kind."""

    items: tuple[Buffer, ...] = ()

    def get(self, device: str, kind: BufferKind) -> int | None:
        """The bytes of ``device``'s buffer of ``kind`` (None: llama.cpp logged none)."""
        found = [b.bytes for b in self.items if b.device == device and b.kind == kind]
        return sum(found) if found else None

    def size(self, device: str, kind: BufferKind) -> int:
        """The bytes of ``device``'s buffer of ``kind``, 0 when there is none."""
        return self.get(device, kind) or 0

    def on(self, device: str) -> int:
        """Every buffer of ``device``, in bytes."""
        return sum(b.bytes for b in self.items if b.device == device)

    def devices(self) -> list[str]:
        """The devices with a buffer, in the order llama.cpp logged them."""
        return list(dict.fromkeys(b.device for b in self.items))


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
    #: The buffers llama.cpp logged while loading.
    buffers: Buffers = field(default_factory=Buffers)
    #: Why a built-in chat template stands in for the model's own (empty when it does not).
    chat_template_note: str = ""
    #: Free memory of each offload device (by buffer name) before loading and after.
    device_free: dict[str, list[int]] = field(default_factory=dict)
    #: No chat template and a name that says nothing of instruct/chat tuning: a base model.
    base_model: bool = False


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
    #: Prompt tokens not evaluated again (already in the KV cache), and where they came from.
    prompt_reused: int = 0
    reused_from: KvSource = "none"


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
    """The end of an answer, and why it ended."""

    request_id: int
    text: str
    finish_reason: FinishReason
    stats: GenerationStats
    #: Older messages left out of the prompt so the conversation fit the context.
    dropped_messages: int = 0
    #: The prompt's tokens and the generated ones (end-of-text included), when the command
    #: asked for them (``ChatCommand.report_tokens``: parity checks, the doctor).
    prompt_token_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()

    @property
    def ended_at_once(self) -> bool:
        """The model's first token was end-of-text: an answer with no text at all."""
        return ended_at_once(self.finish_reason, self.stats.eval_tokens, self.text)


@dataclass(frozen=True)
class EngineFailure:
    """An error the engine reports without dying; ``code`` is its class's wire code
    (:data:`mixdesk.errors.WIRE_CODES`)."""

    code: str
    message: str
    request_id: int = 0
    #: The error's own fields (e.g. a device out-of-memory's device and size).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadCommand:
    """Load a model: the engine answers with :class:`LoadProgress` events, then a
    :class:`ModelInfo` or an :class:`EngineFailure`."""

    config: LoadConfig


@dataclass(frozen=True)
class KvCacheRequest:
    """Keep the KV state of a conversation, and resume it from the longest saved prefix.

    After the answer the engine keeps the conversation's state in its memory (the last few
    conversations, within ``memory_budget_bytes``) and, when ``directory`` is set, in a state
    file there (:mod:`mixdesk.core.engine.kv_store`, within ``disk_budget_bytes``).
    """

    #: Names the conversation (the app's cache key, e.g. ``"chat-17"``).
    conversation: str
    #: The state cache folder ("" : memory only).
    directory: str = ""
    disk_budget_bytes: int = 4 << 30
    memory_budget_bytes: int = 1 << 30
    #: ``mixdesk chat --session FILE``: the state (and the conversation) go to this file too.
    session_file: str = ""


@dataclass(frozen=True)
class ChatCommand:
    """Answer a conversation: :class:`TextDelta` events at most every ``stream_interval_s``,
    then a :class:`ChatDone` (or an :class:`EngineFailure`), all with ``request_id``."""

    request_id: int
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream_interval_s: float = 0.0
    #: Send the prompt's and the answer's token ids with :class:`ChatDone`.
    report_tokens: bool = False
    #: Keep and resume the conversation's KV state (None: only the live cache).
    cache: KvCacheRequest | None = None


@dataclass(frozen=True)
class CancelCommand:
    """Stop answer ``request_id`` (acted on at once, even while the answer is generated)."""

    request_id: int


@dataclass(frozen=True)
class ShutdownCommand:
    """End the engine process."""


@dataclass(frozen=True)
class DryRunCommand:
    """Plan-check a load without loading: llama.cpp's ``no_alloc`` mode reads the model's
    metadata and reserves nothing, but logs the compute buffer each backend would need. The
    engine answers with a :class:`BufferReport` (or an :class:`EngineFailure`)."""

    config: LoadConfig


@dataclass(frozen=True)
class DeviceMemory:
    """Free memory of each offload device (by buffer name) after the first prompt batch of a
    loaded model: with the readings before and after loading, what the runtime itself uses."""

    free: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BufferReport:
    """Buffer sizes llama.cpp logged, summed per device and kind (see ``diagnose.buffer_sizes``)."""

    buffers: Buffers = field(default_factory=Buffers)


#: Everything the app can tell the engine.
EngineCommand = LoadCommand | ChatCommand | CancelCommand | ShutdownCommand | DryRunCommand
