"""An in-memory engine (:class:`~mixdesk.core.engine.like.EngineLike`) for the window's
controllers: no llama.cpp, no child process, the same answer every time.

It loads any :class:`LoadConfig` at once (or fails with the error it was told to), streams a
given text in given pieces with fixed speed figures, can hold an answer until it is
cancelled, and keeps every configuration it was asked to load. The engine itself and one
end-to-end path per feature are tested with the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.like import DeviceMemoryHook
from mixdesk.core.engine.protocol import (
    Buffers,
    ChatDone,
    FinishReason,
    GenerationStats,
    KvCacheRequest,
    LoadConfig,
    ModelInfo,
    SamplingParams,
    TextDelta,
)
from mixdesk.core.engine.stream import AnswerStream
from mixdesk.errors import (
    DeviceOutOfMemoryError,
    EngineBusyError,
    EngineCrashedError,
    NoModelLoadedError,
)

#: The fake's generation speed, in tokens per second (one piece is one token).
EVAL_TPS = 42.0
#: Longest a held answer waits for its cancel (a test that forgets to cancel fails, never hangs).
HOLD_TIMEOUT_S = 10.0


def out_of_memory(device: str = "CUDA0", *, buffer: str = "model", requested: int) -> Exception:
    """The error llama.cpp's log makes of a device that could not allocate ``requested`` bytes."""
    return DeviceOutOfMemoryError(
        f"The model does not fit in GPU memory ({device} could not allocate {requested} bytes "
        f"for its {buffer} buffer); load fewer GPU layers.",
        device=device,
        buffer=buffer,
        requested_bytes=requested,
    )


@dataclass
class Answer:
    """What the next answers say: ``pieces``, one delta each; after ``hold_after`` pieces the
    answer waits for a release or a cancel (None: never); ``fail`` is raised after
    ``fail_after`` pieces (None: never)."""

    pieces: tuple[str, ...] = ("Hello", " from", " the", " fake", " engine.")
    #: Pieces sent before the answer waits for :meth:`FakeEngine.release` or a cancel.
    hold_after: int | None = None
    fail: Exception | None = None
    fail_after: int = 0


class FakeStream(AnswerStream):
    """One answer of the :class:`FakeEngine`."""

    def __init__(self, engine: FakeEngine, request_id: int, answer: Answer, prompt: int) -> None:
        super().__init__()
        self._engine = engine
        self._answer = answer
        self._prompt = prompt
        self.request_id = request_id
        self._cancelled = threading.Event()
        self._go = threading.Event()
        self._sent = 0

    def __next__(self) -> TextDelta:
        answer = self._answer
        if self.result is not None:
            raise StopIteration
        if answer.fail is not None and self._sent == answer.fail_after:
            self._engine.active = None
            if isinstance(answer.fail, EngineCrashedError):
                self._engine.model = None  # the engine died, and its model with it
            raise answer.fail
        if self._sent == answer.hold_after:
            self._go.wait(HOLD_TIMEOUT_S)
        if self._cancelled.is_set() or self._sent == len(answer.pieces):
            finish: FinishReason = "stop" if self._sent == len(answer.pieces) else "cancelled"
            self.result = ChatDone(self.request_id, self.text, finish, self.stats())
            self._engine.active = None
            raise StopIteration
        piece = answer.pieces[self._sent]
        self._sent += 1
        self._text.append(piece)
        return TextDelta(self.request_id, piece, self.stats())

    def stats(self) -> GenerationStats:
        """The speed figures so far (fixed, so tests can compare them)."""
        model = self._engine.model
        return GenerationStats(
            prompt_tokens=self._prompt,
            prompt_eval_tokens=self._prompt,
            prompt_tps=10 * EVAL_TPS,
            eval_tokens=self._sent,
            eval_tps=self._engine.eval_tps if self._sent else 0.0,
            context_used=self._prompt + self._sent,
            context_size=model.n_ctx if model is not None else 0,
        )

    def cancel(self) -> None:
        """Stop the answer: it ends with what was sent, finish reason "cancelled"."""
        self._cancelled.set()
        self._go.set()

    def release(self) -> None:
        """Let a held answer go on."""
        self._go.set()


class FakeEngine:
    """An :class:`EngineLike` in memory.

    Args:
        load_failures: raised by the next loads, in order (then loads succeed).
        answer: what the next answers say (see :class:`Answer`).
        n_layers: the repeating layers the loaded model reports.
        buffers: what a dry run reports (empty: the planner's formula stands).
        speed: the eval tok/s of a load, from its configuration (for Measure).

    Attributes:
        configs: every configuration a load was asked for, in order.
        dry_runs: every configuration a dry run was asked for.
        model: the loaded model (None before a load, after a failed one, or a death).
        closed: how many times :meth:`close` was called.
    """

    def __init__(
        self,
        *,
        load_failures: Sequence[Exception] = (),
        answer: Answer | None = None,
        n_layers: int = 4,
        buffers: Buffers | None = None,
        speed: Callable[[LoadConfig], float] = lambda _config: EVAL_TPS,
    ) -> None:
        self.load_failures = list(load_failures)
        self.answer = answer or Answer()
        self.n_layers = n_layers
        self.buffers = buffers or Buffers()
        self.speed = speed
        self.configs: list[LoadConfig] = []
        self.dry_runs: list[LoadConfig] = []
        #: The KV cache request of every answer asked for.
        self.caches: list[KvCacheRequest | None] = []
        self.on_device_memory: DeviceMemoryHook | None = None
        self.model: ModelInfo | None = None
        self.active: FakeStream | None = None
        self.eval_tps = EVAL_TPS
        self.closed = 0
        self._ids = 0

    @property
    def loads(self) -> list[int]:
        """The GPU layer count of every load asked for."""
        return [c.n_gpu_layers for c in self.configs]

    def load(
        self, config: LoadConfig, *, on_progress: Callable[[float], None] | None = None
    ) -> ModelInfo:
        self.configs.append(config)
        self.model = None
        if self.load_failures:
            raise self.load_failures.pop(0)
        for fraction in (0.5, 1.0):
            if on_progress is not None:
                on_progress(fraction)
        self.eval_tps = self.speed(config)
        self.model = ModelInfo(
            path=config.model_path,
            name=Path(config.model_path).stem,
            architecture="llama",
            n_layers=self.n_layers,
            n_gpu_layers=config.n_gpu_layers,
            n_ctx=config.n_ctx,
            n_ctx_train=config.n_ctx,
            n_vocab=32_000,
            n_params=1_000_000,
            size_bytes=1 << 20,
            chat_template_source="the model's own",
            system_prompt_folded=False,
            load_s=0.01,
            n_threads=config.n_threads or 1,
            flash_attn=config.flash_attn,
            type_k=config.type_k,
            type_v=config.type_v,
        )
        return self.model

    def dry_run(self, config: LoadConfig) -> Buffers:
        self.dry_runs.append(config)
        return self.buffers

    def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams | None = None,
        *,
        stream_interval_s: float = 0.0,
        cache: KvCacheRequest | None = None,
    ) -> FakeStream:
        self.caches.append(cache)
        if self.model is None:
            raise NoModelLoadedError("No model is loaded; load a model first.")
        if self.active is not None:
            raise EngineBusyError("The engine is still answering; stop that answer first.")
        self._ids += 1
        self.active = FakeStream(self, self._ids, self.answer, prompt=len(messages))
        return self.active

    def cancel(self) -> None:
        active = self.active
        if active is not None:
            active.cancel()

    def release(self) -> None:
        """Let the held answer go on (see :attr:`Answer.hold_after`)."""
        active = self.active
        if active is not None:
            active.release()

    def close(self) -> None:
        self.closed += 1
        self.model = None
        self.active = None
