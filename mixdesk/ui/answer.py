"""The answer stream: send, stop, regenerate and edit; the streaming text and its speed,
paced for the view; the answer saved while it arrives."""

from __future__ import annotations

import time
from dataclasses import replace

from PySide6.QtCore import QObject, QTimer, Signal

from mixdesk.core.engine import ChatDone, GenerationStats, ModelInfo
from mixdesk.core.workspace.chat_store import kv_conversation
from mixdesk.core.workspace.endpoints import Endpoint
from mixdesk.errors import EngineCrashedError, NoModelLoadedError
from mixdesk.ui.conversations import ConversationController
from mixdesk.ui.threads import EngineController

# The view is updated at 10 Hz whatever the token rate (each update lays out only the new
# text and renders only the Markdown blocks it completes): smooth to read, and on a 2-core
# machine every millisecond the GUI spends is taken from llama.cpp (whose threads wait for
# each other, so a stolen millisecond costs them more than one). When text arrives faster
# than anyone reads (hundreds of tokens a second), the view updates at 4 Hz.
FLUSH_MS = 100
FAST_FLUSH_MS = 250
FAST_TPS = 200.0
STREAM_INTERVAL_S = 1 / 20  # the engine merges text arriving faster than this into one delta
SAVE_S = 0.25  # and save it this often, so a crash loses at most this much


class AnswerController(QObject):
    """Streams answers into the open conversation, from the loaded model or an endpoint.

    Args:
        engine: the handle on the engine's thread (local and remote answers go through it).
        conversations: where messages are read and saved.

    Attributes:
        source: where answers come from: the loaded model's :class:`ModelInfo`, an
            :class:`Endpoint`, or None (nothing to answer with yet).

    Signals:
        started(object): an answer begins; the conversation's messages before it (a list of
            :class:`StoredMessage`), to show above the streaming answer.
        textArrived(str): more text of the streaming answer (at most every ``FLUSH_MS``: the
            deltas that arrived since, in one piece).
        speed(object, bool): :class:`GenerationStats` to show; True for the final figures.
        finished(object): the :class:`ChatDone`, after it is saved.
        failed(object): the exception that ended the answer, after what arrived is saved
            (an :class:`EngineCrashedError`: the engine died and the source is gone).
        busyChanged(bool): an answer started or ended.
        sourceChanged(): :attr:`source` changed (a model loaded or went, an endpoint chosen).
    """

    started = Signal(object)
    textArrived = Signal(str)
    speed = Signal(object, bool)
    finished = Signal(object)
    failed = Signal(object)
    busyChanged = Signal(bool)
    sourceChanged = Signal()

    def __init__(
        self,
        engine: EngineController,
        conversations: ConversationController,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.conversations = conversations
        self._source: ModelInfo | Endpoint | None = None
        self.editing: int | None = None
        self._request: int | None = None
        self._answer_id: int | None = None
        self._text = ""
        self._shown = 0
        self._stats: GenerationStats | None = None
        self._dirty = False
        #: Messages the last answer's prompt left out (the context was full), and where.
        self.dropped: tuple[int, int] = (0, 0)
        self._last_save = 0.0
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(FLUSH_MS)
        self.flush_timer.timeout.connect(self._flush)
        runner = engine.runner
        runner.delta.connect(self._delta)
        runner.done.connect(self._done)
        runner.chatFailed.connect(self._failed)

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return self._request is not None

    @property
    def source(self) -> ModelInfo | Endpoint | None:
        """Where answers come from (None: nothing to answer with yet)."""
        return self._source

    @source.setter
    def source(self, source: ModelInfo | Endpoint | None) -> None:
        self._source = source
        self.sourceChanged.emit()

    def can_regenerate(self) -> bool:
        """Whether there is an answer to regenerate, and something to regenerate it with."""
        if self.busy or self._source is None or self.conversations.current is None:
            return False
        return any(m.role == "assistant" for m in self.conversations.messages())

    # -- what the user does -------------------------------------------------------------

    def send(self, text: str) -> bool:
        """Add the user's message and start the answer.

        Returns:
            False when there was nothing to send or an answer is still streaming.

        Raises:
            NoModelLoadedError: no model is loaded and no endpoint chosen.
        """
        text = text.strip()
        if not text or self.busy:
            return False
        if self.source is None:
            raise NoModelLoadedError("Load a model first: pick one above and press Load.")
        replacing, self.editing = self.editing, None
        self.conversations.add_user_message(text, replacing=replacing)
        self._start()
        return True

    def regenerate(self) -> None:
        """Answer the last user message again: a new version beside the old answer (kept)."""
        conv = self.conversations.current
        if self.busy or conv is None or self.source is None:
            return
        messages = self.conversations.messages()
        last_user = next((m for m in reversed(messages) if m.role == "user"), None)
        if last_user is not None:
            self.conversations.store.show_after(conv.id, last_user.id)
            self._start()

    def edit(self, message_id: int) -> str | None:
        """Start editing a user message: its text, to put back in the input box. The next
        :meth:`send` replaces it and everything after it."""
        if self.busy:
            return None
        message = next((m for m in self.conversations.messages() if m.id == message_id), None)
        if message is None or message.role != "user":
            return None
        self.editing = message_id
        return message.content

    def stop(self) -> None:
        """Stop the answer; what arrived so far is kept."""
        if self.busy:
            self.engine.cancel()

    def dropped_note(self) -> str:
        """The line the chat shows when the last answer's prompt left older turns out."""
        count, conv_id = self.dropped
        conv = self.conversations.current
        if not count or conv is None or conv.id != conv_id:
            return ""
        return (
            f"{count} older message{'s' if count > 1 else ''} of this conversation "
            f"{'were' if count > 1 else 'was'} left out of the model's context to make room "
            "(the conversation itself is kept whole)."
        )

    def save_partial(self) -> None:
        """Save what arrived of a streaming answer (the window is closing)."""
        if self._answer_id is not None and self.busy:
            self.conversations.store.update_message(self._answer_id, self._text)

    # -- the stream ---------------------------------------------------------------------

    def _start(self) -> None:
        conversations = self.conversations
        conv = conversations.ensure()
        history = conversations.history()
        overflow = conversations.settings.context_overflow
        sampling = replace(conversations.sampling(), overflow=overflow)
        self.started.emit(conversations.messages())
        self._answer_id = conversations.store.add_message(conv.id, "assistant", "").id
        self._text = ""
        self._shown = 0
        self._stats = None
        self.flush_timer.setInterval(FLUSH_MS)
        if isinstance(self.source, Endpoint):
            self._request = self.engine.chat_remote(self.source, history, sampling)
        else:
            cache = conversations.settings.kv_cache(kv_conversation(conv.id))
            self._request = self.engine.chat(
                history, sampling, interval=STREAM_INTERVAL_S, cache=cache
            )
        self.flush_timer.start()
        self.busyChanged.emit(True)

    def _delta(self, request_id: int, text: str, stats: GenerationStats) -> None:
        if request_id != self._request:
            return  # a chunk of an answer that was stopped: dropped
        self._text += text
        self._stats = stats
        self._dirty = True

    def _flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.textArrived.emit(self._text[self._shown :])
        self._shown = len(self._text)
        now = time.monotonic()
        if self._stats is not None:
            self.speed.emit(self._stats, False)
            fast = self._stats.eval_tps > FAST_TPS
            self.flush_timer.setInterval(FAST_FLUSH_MS if fast else FLUSH_MS)
        if self._answer_id is not None and now - self._last_save >= SAVE_S:
            self._last_save = now
            self.conversations.store.update_message(self._answer_id, self._text)

    def _end(self) -> None:
        self.flush_timer.stop()
        self._request = None
        self.busyChanged.emit(False)

    def _done(self, request_id: int, done: ChatDone) -> None:
        if request_id != self._request:
            return
        assert self._answer_id is not None
        self._end()
        self.conversations.store.update_message(
            self._answer_id, done.text, stats=done.stats, finish_reason=done.finish_reason
        )
        conv = self.conversations.current
        self.dropped = (done.dropped_messages, conv.id if conv is not None else 0)
        self.speed.emit(done.stats, True)
        self.finished.emit(done)

    def _failed(self, request_id: int, err: Exception) -> None:
        if request_id != self._request:
            return
        self._end()
        if self._answer_id is not None:
            # what was shown stays: the partial answer is saved, marked as interrupted
            self.conversations.store.update_message(
                self._answer_id, self._text, stats=None, finish_reason="error"
            )
        if isinstance(err, EngineCrashedError):
            self.source = None
        self.failed.emit(err)
