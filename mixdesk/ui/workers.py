"""Qt adapters over the core: QObject workers moved to QThreads, talking through typed signals.

Nothing here blocks the GUI thread: loading, generation, planning and downloads run in the
workers' threads. A cancel is the one call made straight from the GUI thread, because the
worker thread is busy streaming; the engine's cancel is thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from mixdesk.core.chat_template import ChatMessage
from mixdesk.core.engine import ChatDone, Engine, LoadConfig, ModelInfo, SamplingParams
from mixdesk.core.engine.client import AnswerStream
from mixdesk.errors import EngineCrashedError, OutOfMemoryError, user_message

log = logging.getLogger(__name__)


class EngineWorker(QObject):
    """Owns the :class:`Engine`; runs in its own thread.

    Signals:
        loadProgress(float): 0..1 while a model loads.
        loaded(object): the :class:`ModelInfo`, and a note (str) when layers were reduced.
        loadFailed(str): a sentence.
        delta(int, str, object): request id, text, :class:`GenerationStats`.
        done(int, object): request id, :class:`ChatDone`.
        chatFailed(int, str, bool): request id, sentence, whether the engine died.
    """

    loadProgress = Signal(float)
    loaded = Signal(object, str)
    loadFailed = Signal(str)
    delta = Signal(int, str, object)
    done = Signal(int, object)
    chatFailed = Signal(int, str, bool)

    def __init__(self, engine: Engine | None = None) -> None:
        super().__init__()
        self.engine = engine or Engine()
        self._stream: AnswerStream | None = None
        self._lock = threading.Lock()

    @Slot(object)
    def load(self, config: LoadConfig) -> None:
        """Load a model; if it runs out of memory with layers on the GPU, retry with fewer."""
        note = ""
        wanted = config.n_gpu_layers
        while True:
            try:
                info = self.engine.load(config, on_progress=self.loadProgress.emit)
                break
            except (OutOfMemoryError, EngineCrashedError) as err:
                out_of_memory = isinstance(err, OutOfMemoryError) or "memory" in str(err)
                if not out_of_memory or config.n_gpu_layers == 0:
                    self.loadFailed.emit(user_message(err))
                    return
                fewer = max(0, (config.n_gpu_layers if config.n_gpu_layers >= 0 else 999) - 4)
                log.warning(
                    "load ran out of memory with %s GPU layers; retrying with %s",
                    config.n_gpu_layers,
                    fewer,
                )
                config = replace(config, n_gpu_layers=fewer)
                note = f"{wanted} GPU layers did not fit in memory, so MixDesk loaded {fewer}."
            except Exception as err:  # noqa: BLE001 - every failure reaches the user as a sentence
                self.loadFailed.emit(user_message(err))
                return
        self.loaded.emit(info, note)

    @Slot(int, object, object, float)
    def chat(
        self,
        request_id: int,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        interval: float,
    ) -> None:
        """Stream an answer, emitting deltas and the end."""
        self._relay(
            request_id, lambda: self.engine.chat(messages, sampling, stream_interval_s=interval)
        )

    @Slot(int, object, object, object)
    def chat_remote(
        self, request_id: int, endpoint: Any, messages: list[ChatMessage], sampling: SamplingParams
    ) -> None:
        """Stream an answer from a remote endpoint, with the same signals as a local one."""
        from mixdesk.core.remote_backend import remote_chat

        self._relay(request_id, lambda: remote_chat(endpoint, messages, sampling))

    def _relay(self, request_id: int, start: Callable[[], AnswerStream]) -> None:
        """Start an answer and pass its deltas, its end or its failure on as signals."""
        try:
            stream = start()
            with self._lock:
                self._stream = stream
            for d in stream:
                self.delta.emit(request_id, d.text, d.stats)
            assert stream.result is not None
            self.done.emit(request_id, stream.result)
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as a sentence
            self.chatFailed.emit(request_id, user_message(err), isinstance(err, EngineCrashedError))
        finally:
            with self._lock:
                self._stream = None

    def cancel(self) -> None:
        """Stop the current answer (called from the GUI thread)."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.cancel()
            except Exception:
                log.info("cancel failed", exc_info=True)

    @Slot()
    def unload(self) -> None:
        """End the engine process (frees its RAM and VRAM)."""
        self.engine.close()


class EngineController(QObject):
    """The GUI thread's handle on the engine worker and its thread.

    Signals (re-emitted from the worker, delivered in the GUI thread):
        requestLoad(object), requestChat(int, object, object, float), requestUnload(): to the worker.
    """

    requestLoad = Signal(object)
    requestChat = Signal(int, object, object, float)
    requestUnload = Signal()
    requestRemoteChat = Signal(int, object, object, object)

    def __init__(self, engine: Engine | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker_thread = QThread()
        self.worker_thread.setObjectName("engine")
        self.worker = EngineWorker(engine)
        self.worker.moveToThread(self.worker_thread)
        self.requestLoad.connect(self.worker.load)
        self.requestChat.connect(self.worker.chat)
        self.requestUnload.connect(self.worker.unload)
        self.requestRemoteChat.connect(self.worker.chat_remote)
        self.worker_thread.start()
        self._next_id = 0
        self.model: ModelInfo | None = None
        self.worker.loaded.connect(self._remember)

    def _remember(self, info: ModelInfo, _note: str) -> None:
        self.model = info

    def load(self, config: LoadConfig) -> None:
        """Load a model (in the worker thread)."""
        self.model = None
        self.requestLoad.emit(config)

    def chat(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, interval: float = 1 / 60
    ) -> int:
        """Start an answer; returns its request id."""
        self._next_id += 1
        self.requestChat.emit(self._next_id, messages, sampling, interval)
        return self._next_id

    def chat_remote(
        self, endpoint: Any, messages: list[ChatMessage], sampling: SamplingParams
    ) -> int:
        """Start an answer from a remote endpoint; returns its request id."""
        self._next_id += 1
        self.requestRemoteChat.emit(self._next_id, endpoint, messages, sampling)
        return self._next_id

    def cancel(self) -> None:
        """Stop the current answer."""
        self.worker.cancel()

    def shutdown(self) -> None:
        """Stop the engine and the thread (when the window closes)."""
        self.worker.cancel()
        self.requestUnload.emit()
        self.worker_thread.quit()
        self.worker_thread.wait(10_000)
        self.worker.engine.close()


#: What a TaskWorker reports for a function that returned None.
DONE = "done"


class TaskWorker(QObject):
    """Runs one blocking function in its own thread and reports the result.

    Signals:
        finished(object): the function's return value.
        failed(str): a sentence.
        progress(object): whatever the function reports through its ``report`` argument.
    """

    finished = Signal(object)
    failed = Signal(str)
    progress = Signal(object)

    def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.cancel_event = threading.Event()
        self.worker_thread = QThread()
        self.moveToThread(self.worker_thread)
        self.worker_thread.started.connect(self._run)
        self.finished.connect(self.worker_thread.quit)
        self.failed.connect(self.worker_thread.quit)

    def start(self) -> None:
        """Start the work."""
        self.worker_thread.start()

    @Slot()
    def _run(self) -> None:
        try:
            result = self._fn(
                *self._args, report=self.progress.emit, cancel=self.cancel_event, **self._kwargs
            )
        except Exception as err:  # noqa: BLE001
            self.failed.emit(user_message(err))
            return
        # Never send None through a Signal(object): PySide6 6.12 on Python 3.11 can then
        # release None once too often and abort the interpreter ("none_dealloc").
        self.finished.emit(result if result is not None else DONE)


__all__ = ["ChatDone", "EngineController", "EngineWorker", "TaskWorker"]
