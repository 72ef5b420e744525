"""Qt adapters over the core: QObjects moved to QThreads, talking through typed signals.

The engine's runner (load, chat, measure) lives in one thread; background tasks (planning,
downloads, probes) in their own. Nothing here blocks the GUI thread. A cancel is the one
call made straight from the GUI thread, because the runner thread is busy streaming; the
engine's cancel is thread-safe.

Failures cross to the GUI thread as the exceptions themselves (``loadFailed(object)``,
``chatFailed(int, object)``, ``failed(object)``): the receiver decides by type, and
:func:`mixdesk.errors.user_message` turns one into the sentence the user sees.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import ChatDone, Engine, ModelInfo, SamplingParams
from mixdesk.core.engine.like import EngineLike
from mixdesk.core.engine.protocol import KvCacheRequest
from mixdesk.core.engine.stream import AnswerStream
from mixdesk.core.loading.load import LoadOutcome, load_model, record_answer_speed
from mixdesk.core.loading.measure import MeasureVariant, run_measure
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.planning.calibration import CalibrationStore
from mixdesk.core.workspace.endpoints import Endpoint
from mixdesk.errors import EngineCrashedError

log = logging.getLogger(__name__)


class EngineRunner(QObject):
    """Owns the engine (an :class:`EngineLike`: the real :class:`Engine` by default); runs in
    its own thread. Plans and loads through :mod:`mixdesk.core.loading.service`, so the window
    never builds a load configuration itself.

    Signals:
        loadProgress(float): 0..1 while a model loads.
        loaded(object): the :class:`LoadOutcome` (model info, plan, note).
        loadFailed(object): the exception that ended the load (or the measuring).
        measured(object): the :class:`MeasureReport` so far (every variant's rounds);
            ``measureDone`` follows the last one.
        measureDone(): measuring ended (finished or failed).
        delta(int, str, object): request id, text, :class:`GenerationStats`.
        done(int, object): request id, :class:`ChatDone`.
        chatFailed(int, object): request id, the exception that ended the answer
            (an :class:`~mixdesk.errors.EngineCrashedError` when the engine died).
        calibrated(object): what this machine has measured, after a load or an answer
            added to it (a :class:`~mixdesk.core.planning.calibration.Calibration`, read here,
            off the GUI thread).
    """

    loadProgress = Signal(float)
    loaded = Signal(object)
    loadFailed = Signal(object)
    measured = Signal(object)
    measureDone = Signal()
    delta = Signal(int, str, object)
    done = Signal(int, object)
    chatFailed = Signal(int, object)
    calibrated = Signal(object)

    def __init__(self, engine: EngineLike | None = None) -> None:
        super().__init__()
        self.engine: EngineLike = engine or Engine()
        self._stream: AnswerStream | None = None
        self._lock = threading.Lock()
        #: Where loads and answers keep what they measure (None: nowhere; the window sets it).
        self.store: CalibrationStore | None = None
        self._outcome: LoadOutcome | None = None

    @Slot(object)
    def load(self, request: LoadRequest) -> None:
        """Plan and load a model (retrying a GPU out-of-memory with fewer layers, bounded)."""
        self._outcome = None
        try:
            outcome = load_model(
                self.engine, request, on_progress=self.loadProgress.emit, store=self.store
            )
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as a sentence
            self.loadFailed.emit(err)
            return
        self._outcome = outcome
        self.loaded.emit(outcome)

    @Slot(object, list)
    def measure(self, request: LoadRequest, variants: list[MeasureVariant]) -> None:
        """Measure generation speed with each variant in interleaved rounds, in this one
        engine (each load ends the previous engine process first, so two copies are never in
        memory); the last load stays."""
        try:
            _report, outcome = run_measure(
                self.engine, request, variants, on_report=self.measured.emit
            )
            self._outcome = outcome
            if outcome is not None:
                self.loaded.emit(outcome)
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as a sentence
            self.loadFailed.emit(err)
        finally:
            self.measureDone.emit()

    @Slot(int, object, object, float, object)
    def chat(
        self,
        request_id: int,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        interval: float,
        cache: KvCacheRequest | None = None,
    ) -> None:
        """Stream an answer, emitting deltas and the end; its speed is kept for its setting
        (``cache``: the conversation's KV state kept and resumed)."""
        self._relay(
            request_id,
            lambda: self.engine.chat(messages, sampling, stream_interval_s=interval, cache=cache),
            on_done=self._keep_speed,
        )

    def _keep_speed(self, done: ChatDone) -> None:
        if self.store is None or self._outcome is None:
            return
        if record_answer_speed(self.store, self._outcome, done.stats):
            self.calibrated.emit(self.store.read())

    @Slot(int, object, object, object)
    def chat_remote(
        self,
        request_id: int,
        endpoint: Endpoint,
        messages: list[ChatMessage],
        sampling: SamplingParams,
    ) -> None:
        """Stream an answer from a remote endpoint, with the same signals as a local one.
        An endpoint without a key gets the one saved for its address (read here, off the GUI
        thread)."""
        from mixdesk.core.workspace.endpoints import remote_chat
        from mixdesk.core.workspace.settings import load_endpoint_keys

        def start() -> AnswerStream:
            keyed = endpoint
            if endpoint.api_key is None:
                keyed = replace(endpoint, api_key=load_endpoint_keys().get(endpoint.url))
            return remote_chat(keyed, messages, sampling)

        self._relay(request_id, start)

    def _relay(
        self,
        request_id: int,
        start: Callable[[], AnswerStream],
        on_done: Callable[[ChatDone], None] | None = None,
    ) -> None:
        """Start an answer and pass its deltas, its end or its failure on as signals."""
        try:
            stream = start()
            with self._lock:
                self._stream = stream
            for d in stream:
                self.delta.emit(request_id, d.text, d.stats)
            assert stream.result is not None
            self.done.emit(request_id, stream.result)
            if on_done is not None:
                on_done(stream.result)
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as a sentence
            self.chatFailed.emit(request_id, err)
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
    """The GUI thread's handle on the engine runner and its thread.

    Signals (emitted here, delivered to the runner in its thread): requestLoad(object),
    requestMeasure(object, list), requestChat(int, object, object, float, object),
    requestRemoteChat(int, object, object, object), requestUnload().
    """

    requestLoad = Signal(object)
    requestMeasure = Signal(object, list)
    requestChat = Signal(int, object, object, float, object)
    requestUnload = Signal()
    requestRemoteChat = Signal(int, object, object, object)

    def __init__(self, engine: EngineLike | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner_thread = QThread()
        self.runner_thread.setObjectName("engine")
        self.runner = EngineRunner(engine)
        self.runner.moveToThread(self.runner_thread)
        self.requestLoad.connect(self.runner.load)
        self.requestMeasure.connect(self.runner.measure)
        self.requestChat.connect(self.runner.chat)
        self.requestUnload.connect(self.runner.unload)
        self.requestRemoteChat.connect(self.runner.chat_remote)
        self.runner_thread.start()
        self._next_id = 0
        #: The loaded model (None while loading, after a failed load or the engine's death).
        self.model: ModelInfo | None = None
        self.runner.loaded.connect(self._remember)
        self.runner.chatFailed.connect(self._chat_failed)

    def _remember(self, outcome: LoadOutcome) -> None:
        self.model = outcome.info

    def _chat_failed(self, _request_id: int, err: BaseException) -> None:
        if isinstance(err, EngineCrashedError):
            self.model = None

    def load(self, request: LoadRequest) -> None:
        """Plan and load a model (in the runner thread)."""
        self.model = None
        self.requestLoad.emit(request)

    def measure(self, request: LoadRequest, variants: list[MeasureVariant]) -> None:
        """Measure tok/s with each variant in the one engine (in the runner thread)."""
        self.model = None
        self.requestMeasure.emit(request, variants)

    def chat(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        *,
        interval: float = 1 / 60,
        cache: KvCacheRequest | None = None,
    ) -> int:
        """Start an answer (``cache``: keep and resume the conversation's KV state, see
        ``Settings.kv_cache``); returns its request id."""
        self._next_id += 1
        self.requestChat.emit(self._next_id, messages, sampling, interval, cache)
        return self._next_id

    def chat_remote(
        self, endpoint: Endpoint, messages: list[ChatMessage], sampling: SamplingParams
    ) -> int:
        """Start an answer from a remote endpoint; returns its request id."""
        self._next_id += 1
        self.requestRemoteChat.emit(self._next_id, endpoint, messages, sampling)
        return self._next_id

    def cancel(self) -> None:
        """Stop the current answer."""
        self.runner.cancel()

    def shutdown(self) -> None:
        """Stop the engine and the thread (when the window closes)."""
        self.runner.cancel()
        self.requestUnload.emit()
        self.runner_thread.quit()
        self.runner_thread.wait(10_000)
        self.runner.engine.close()


#: What a BackgroundTask reports for a function that returned None.
DONE = "done"


class _TaskJob(QObject):
    """The part of a :class:`BackgroundTask` that lives in its thread: runs the function and
    reports through its own signals, which the task relays in the thread that made it."""

    finished = Signal(object)
    failed = Signal(object)
    progress = Signal(object)

    def __init__(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], cancel: threading.Event
    ) -> None:
        super().__init__()
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._cancel = cancel

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn(
                *self._args, report=self.progress.emit, cancel=self._cancel, **self._kwargs
            )
        except Exception as err:  # noqa: BLE001 - the receiver decides by type
            self.failed.emit(err)
        else:
            # A receiver tells "nothing to report" from a failure by the DONE marker (None was
            # avoided here for PySide6 6.12's reference-count fault, see mixdesk.ui.refcounts).
            self.finished.emit(result if result is not None else DONE)
        finally:
            self.thread().quit()  # thread-safe; its finished signal lets the task go


class BackgroundTask(QObject):
    """Runs one blocking function in its own thread and reports the result.

    The task itself stays in the thread that made it (the GUI thread); only its job moves
    to the new thread. So whatever is connected to the task's signals, a lambda included,
    runs in the GUI thread: PySide6 runs a plain callable connected to a signal in the thread
    of the *sender*, and a task that had moved itself ran its receivers' widget code in its
    own thread (random crashes, and queued calls to receivers already gone).

    Signals:
        finished(object): the function's return value.
        failed(object): the exception it raised.
        progress(object): whatever the function reports through its ``report`` argument.
    """

    finished = Signal(object)
    failed = Signal(object)
    progress = Signal(object)

    def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        self.runner_thread = QThread()
        self._job = _TaskJob(fn, args, kwargs, self.cancel_event)
        self._job.moveToThread(self.runner_thread)
        self.runner_thread.started.connect(self._job.run)
        # Signal to signal, received by this task: queued into the thread that made it.
        self._job.finished.connect(self.finished)
        self._job.failed.connect(self.failed)
        self._job.progress.connect(self.progress)
        # Queued too (the QThread object lives here), and after the job's last signal.
        self.runner_thread.finished.connect(self._ended)

    #: Tasks whose thread runs: kept referenced until they end, and ended with the app.
    _alive: ClassVar[set[BackgroundTask]] = set()

    def start(self) -> None:
        """Start the work."""
        BackgroundTask._alive.add(self)
        self.runner_thread.start()

    @Slot()
    def _ended(self) -> None:
        # Let go on the next turn of the loop, outside the slot its own thread's signal called.
        QTimer.singleShot(0, self._release)

    def _release(self) -> None:
        # Never block here: the ending thread may still need the interpreter to finish.
        if not self.runner_thread.wait(0):
            QTimer.singleShot(5, self._release)
            return
        BackgroundTask._alive.discard(self)

    @classmethod
    def stop_all(cls, wait_ms: int = 10_000) -> None:
        """Ask every running task to stop and wait for their threads (the window closes):
        a QThread destroyed while it runs aborts the process."""
        tasks = list(cls._alive)
        for task in tasks:
            task.cancel_event.set()
        for task in tasks:
            task.runner_thread.quit()
            task.runner_thread.wait(wait_ms)
        cls._alive.difference_update(tasks)


__all__ = ["BackgroundTask", "ChatDone", "EngineController", "EngineRunner"]
