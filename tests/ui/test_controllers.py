"""The window's controllers, each on its own (no window): real SQLite, a real engine on a
generated model, real threads; tests wait on signals."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import ChatDone, Engine, GenerationStats, SamplingParams
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import import_model
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import LoadOutcome
from mixdesk.core.loading.measure import MeasureReport, MeasureVariant
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.endpoints import Endpoint
from mixdesk.core.workspace.settings import Settings, load_endpoint_keys
from mixdesk.errors import EngineCrashedError, NoModelLoadedError, user_message
from mixdesk.ui.answer import AnswerController
from mixdesk.ui.conversations import ConversationController
from mixdesk.ui.measure import MeasureController
from mixdesk.ui.models import ModelController
from mixdesk.ui.threads import EngineController
from tests.helpers.window import CPU


@pytest.fixture
def engine(qtbot: QtBot, tmp_path: Path) -> Iterator[EngineController]:
    """The engine's Qt handle; the controllers under test are its children, so they are deleted
    here, in this thread, after the engine stops (not by Python's collector in any thread)."""
    controller = EngineController(Engine(log_dir=tmp_path / "logs"))
    yield controller
    controller.shutdown()
    shiboken6.delete(controller)


@pytest.fixture
def conversations(tmp_path: Path) -> Iterator[ConversationController]:
    store = ChatStore(tmp_path / "chats.sqlite")
    yield ConversationController(store, Settings(max_tokens=33, system_prompt="Be brief."))
    store.close()


class _Relay(QObject):
    """Re-emits a worker thread's signal in this thread (a blocker waiting on the worker's own
    signal would be called in the worker thread)."""

    loaded = Signal(object)


def load(qtbot: QtBot, engine: EngineController, path: Path, **choices: object) -> LoadOutcome:
    request = LoadRequest(resolve_file(path), CPU, LoadChoices(n_ctx=512, **choices))  # type: ignore[arg-type]
    relay = _Relay()
    engine.runner.loaded.connect(relay.loaded)
    with qtbot.waitSignal(relay.loaded, timeout=30_000) as blocker:
        engine.load(request)
    outcome = blocker.args[0]
    assert isinstance(outcome, LoadOutcome)
    return outcome


# -- conversations ---------------------------------------------------------------------


def test_conversations_alone(qtbot: QtBot, conversations: ConversationController) -> None:
    c = conversations
    with qtbot.waitSignal(c.opened) as opened:
        first = c.new()
    assert opened.args == [first]
    assert first.system_prompt == "Be brief."
    assert c.sampling() == Settings(max_tokens=33).sampling()
    question = "What is a mixture of experts, in one long sentence please?"
    c.add_user_message(question)
    assert c.current is not None and c.current.title == question[:48]  # titled by it
    c.store.add_message(first.id, "assistant", "An answer.")
    assert [(m.role, m.content) for m in c.history()] == [
        ("system", "Be brief."),
        ("user", question),
        ("assistant", "An answer."),
    ]
    c.set_sampling(SamplingParams(max_tokens=5))
    assert c.sampling() == SamplingParams(max_tokens=5)
    user = c.messages()[0]
    c.add_user_message("Shorter", replacing=user.id)  # an edit replaces it and what follows
    assert [m.content for m in c.messages()] == ["Shorter"]
    second = c.new()
    c.rename("Second")
    with qtbot.waitSignal(c.listChanged):
        c.set_search("Shorter")  # editing the first message retitled it
    assert [x.id for x in c.listing()] == [first.id]
    c.set_search("")
    c.open(first.id)
    with qtbot.waitSignal(c.opened) as opened:
        c.delete()
    assert opened.args[0].id == second.id
    assert first.id not in [x.id for x in c.listing()]  # gone from the list at once...
    assert c.store.get(first.id) is not None  # ...but Undo can still bring it back
    with qtbot.waitSignal(c.opened) as opened:
        c.undo()
    assert opened.args[0].id == first.id and first.id in [x.id for x in c.listing()]
    c.delete()  # first again
    c.delete()  # second: the first is now deleted for good
    assert c.store.get(first.id) is None
    assert c.current is not None and c.current.id not in (first.id, second.id)  # a fresh one
    c.finish_delete()  # the window closes: nothing waits for an undo
    assert c.store.get(second.id) is None


# -- the answer stream -----------------------------------------------------------------


def test_answers_alone(
    qtbot: QtBot,
    engine: EngineController,
    conversations: ConversationController,
    models: dict[str, Path],
) -> None:
    answers = AnswerController(engine, conversations, engine)
    with pytest.raises(NoModelLoadedError) as refused:
        answers.send("hello")
    assert user_message(refused.value) == "Load a model first: pick one above and press Load."
    answers.source = load(qtbot, engine, models["q2_k"]).info
    conversations.new()
    conversations.set_sampling(SamplingParams(max_tokens=40, seed=1))
    texts: list[str] = []
    speeds: list[tuple[GenerationStats, bool]] = []
    answers.textArrived.connect(texts.append)
    answers.speed.connect(lambda stats, final: speeds.append((stats, final)))
    busy: list[bool] = []
    answers.busyChanged.connect(busy.append)
    with qtbot.waitSignal(answers.finished, timeout=30_000) as finished:
        assert answers.send("Tell me something")
        assert not answers.send("and another thing")  # one answer at a time
    done = finished.args[0]
    assert isinstance(done, ChatDone)
    assert busy == [True, False]
    assert done.text.startswith("".join(texts))
    assert speeds[-1] == (done.stats, True)
    stored = conversations.messages()
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == done.text
    assert stored[1].stats == done.stats  # a GenerationStats, as it arrived
    assert answers.edit(stored[0].id) == "Tell me something"
    with qtbot.waitSignal(answers.finished, timeout=30_000):
        answers.send("Edited")
    assert conversations.messages()[0].content == "Edited"
    assert len(conversations.messages()) == 2
    assert conversations.messages()[0].versions == 2  # the original is kept beside it


def test_an_engine_death_arrives_as_its_exception(
    qtbot: QtBot,
    engine: EngineController,
    conversations: ConversationController,
    models: dict[str, Path],
) -> None:
    answers = AnswerController(engine, conversations, engine)
    answers.source = load(qtbot, engine, models["f32"]).info
    assert engine.model is not None
    conversations.new()
    conversations.set_sampling(SamplingParams(max_tokens=0))  # until the context is full
    real = engine.runner.engine
    assert isinstance(real, Engine)
    pid = real.pid
    assert pid is not None
    killed: list[int] = []

    def kill(_stats: GenerationStats, _final: bool) -> None:
        if not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    answers.speed.connect(kill)
    with qtbot.waitSignal(answers.failed, timeout=30_000) as failed:
        answers.send("Keep talking")
    err = failed.args[0]
    assert isinstance(err, EngineCrashedError)
    assert "SIGKILL" in user_message(err)
    after: tuple[object, object] = (answers.source, engine.model)
    assert after == (None, None)  # nothing answers until a new load
    answer = conversations.messages()[-1]
    assert (answer.finish_reason, bool(answer.content)) == ("error", True)


# -- the model and engine --------------------------------------------------------------


def test_models_alone(
    qtbot: QtBot, engine: EngineController, tmp_path: Path, models: dict[str, Path]
) -> None:
    settings = Settings()
    controller = ModelController(engine, Library(tmp_path / "models"), settings, engine)
    path = str(models["q2_k"])
    with qtbot.waitSignal(controller.profileReady, timeout=10_000) as ready:
        controller.choose_file(path)
    assert ready.args[0] == resolve_file(path)  # resolved and checked once, off the GUI thread
    assert ready.args[1].n_layers > 0
    with qtbot.waitSignal(controller.loaded, timeout=30_000):
        controller.load(
            LoadRequest(ready.args[0], CPU, LoadChoices(n_ctx=256), profile=ready.args[1])
        )
    assert controller.info is not None and controller.info.n_ctx == 256
    assert Settings.load().last_model == path  # remembered for the next start
    with qtbot.waitSignal(controller.lastModelFound, timeout=10_000) as found:
        controller.find_last()
    assert found.args == [path]

    endpoint = controller.add_endpoint("http://127.0.0.1:9", api_key="k3y", name="Box")
    assert endpoint == Endpoint("http://127.0.0.1:9/v1", name="Box")
    assert Settings.load().endpoints == [endpoint]
    assert load_endpoint_keys() == {"http://127.0.0.1:9/v1": "k3y"}
    with qtbot.waitSignal(controller.sourceChanged):
        controller.choose_endpoint(endpoint)
    assert controller.info is not None and controller.info.architecture == "remote"

    moved = tmp_path / "moved"
    import_model(models["q4_k_m"], library=Library(moved))
    settings.models_dir = str(moved)
    settings.save()
    with qtbot.waitSignal(controller.libraryChanged, timeout=10_000) as changed:
        controller.follow_models_dir()
    assert changed.args[0].root == moved == controller.library.root
    assert [e.path for e in controller.library.entries()] == [str(models["q4_k_m"])]


def test_a_missing_last_model_is_not_selected(
    qtbot: QtBot, engine: EngineController, tmp_path: Path
) -> None:
    settings = Settings(last_model=str(tmp_path / "gone.gguf"))
    controller = ModelController(engine, Library(tmp_path / "models"), settings, engine)
    with qtbot.waitSignal(controller.lastModelFound, timeout=10_000) as found:
        controller.find_last()
    assert found.args == [""]


# -- measuring -------------------------------------------------------------------------


def test_measuring_alone(qtbot: QtBot, engine: EngineController, models: dict[str, Path]) -> None:
    measuring = MeasureController(engine, engine)
    request = LoadRequest(resolve_file(models["q2_k"]), CPU, LoadChoices(n_ctx=256))
    seen: list[MeasureReport] = []
    measuring.measured.connect(seen.append)
    variants = [MeasureVariant("as planned", request.choices)]
    with qtbot.waitSignal(measuring.finished, timeout=60_000):
        assert measuring.start(request, variants)
        assert not measuring.start(request, variants)  # one measuring at a time
    assert not measuring.running
    final = seen[-1]
    assert final.finished and final.results[0].variant.label == "as planned"
    assert len(final.results[0].rounds) == final.rounds and final.results[0].median > 0
    assert measuring.fastest() is None  # nothing to beat the current setting
    assert engine.model is not None  # the last measured load stays
