"""The window's engine handle passes a conversation's KV cache request to the engine."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.workspace.chat_store import kv_conversation
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.threads import EngineController
from tests.helpers.fake_engine import FakeEngine
from tests.helpers.model_factory import make_model
from tests.helpers.window import CPU


class _Relay(QObject):
    """Re-emits the runner thread's signals in this thread."""

    loaded = Signal(object)
    done = Signal(int, object)


def test_an_answer_carries_its_conversations_cache_request(
    qtbot: QtBot, engine: EngineController, fake: FakeEngine, tmp_path: Path
) -> None:
    model = resolve_file(make_model(tmp_path))
    relay = _Relay()
    engine.runner.loaded.connect(relay.loaded)
    engine.runner.done.connect(relay.done)
    with qtbot.waitSignal(relay.loaded, timeout=5_000):
        engine.load(
            LoadRequest(model, CPU, LoadChoices(n_ctx=512), profile=profile_local(model.path))
        )
    cache = Settings(kv_cache_gib=1.0).kv_cache(kv_conversation(7))
    messages = [ChatMessage("user", "Hello")]
    with qtbot.waitSignal(relay.done, timeout=5_000):
        engine.chat(messages, Settings().sampling(), cache=cache)
    with qtbot.waitSignal(relay.done, timeout=5_000):
        engine.chat(messages, Settings().sampling())
    assert fake.caches == [cache, None]
    assert cache.conversation == "chat-7"
    assert cache.disk_budget_bytes == 1 << 30
