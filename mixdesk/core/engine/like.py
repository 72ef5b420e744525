"""What the load service and the window's controllers need of an engine: :class:`EngineLike`.

:class:`~mixdesk.core.engine.client.Engine` (llama.cpp in a child process) is the real one.
Anything with these methods can stand in for it, as the tests' in-memory engine does, so the
controllers' tests run without llama.cpp and answer the same way every time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.protocol import (
    Buffers,
    KvCacheRequest,
    LoadConfig,
    ModelInfo,
    SamplingParams,
)
from mixdesk.core.engine.stream import AnswerStream

#: Called after a load's first prompt batch with the loaded model and each device's free
#: memory; returns the runtime overheads kept (see ``Engine.on_device_memory``).
DeviceMemoryHook = Callable[[ModelInfo, dict[str, int]], dict[str, int]]


class EngineLike(Protocol):
    """An engine: loads one model at a time and streams answers from it.

    Attributes:
        on_device_memory: set by the load service; the engine calls it with what a load
            showed of each device's memory (None: nobody listens).
    """

    on_device_memory: DeviceMemoryHook | None

    def load(
        self, config: LoadConfig, *, on_progress: Callable[[float], None] | None = None
    ) -> ModelInfo:
        """Load the model of ``config`` as given (the load service built and checked it).

        Raises:
            MixdeskError: the load failed (DeviceOutOfMemoryError: fewer GPU layers may fit).
        """
        ...

    def dry_run(self, config: LoadConfig) -> Buffers:
        """The buffers llama.cpp would allocate for ``config`` (compute buffers exact)."""
        ...

    def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams | None = None,
        *,
        stream_interval_s: float = ...,
        cache: KvCacheRequest | None = None,
    ) -> AnswerStream:
        """Start an answer to ``messages`` (``cache``: keep and resume the conversation's KV
        state).

        Raises:
            NoModelLoadedError: no model is loaded.
            EngineBusyError: another answer is still streaming.
        """
        ...

    def cancel(self) -> None:
        """Stop the current answer, if any (safe from any thread)."""
        ...

    def close(self) -> None:
        """Unload the model and free all its memory."""
        ...
