"""The window's controllers over the in-memory engine (tests/helpers/fake_engine.py): loads
that fail and retry, answers that stream, stop or die, Measure and the settings signal, in
milliseconds and the same way every time. test_controllers.py runs them on the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import ChatDone, Engine, GenerationStats
from mixdesk.core.engine.like import EngineLike
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import import_model
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import LoadOutcome
from mixdesk.core.loading.measure import MeasureVariant
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import EngineCrashedError, user_message
from mixdesk.ui.answer import AnswerController
from mixdesk.ui.chat_pane import ChatPane
from mixdesk.ui.conversations import ConversationController
from mixdesk.ui.measure import MeasureController
from mixdesk.ui.models import ModelController
from mixdesk.ui.settings_model import SettingsModel
from mixdesk.ui.threads import EngineController
from tests.helpers.fake_engine import EVAL_TPS, Answer, FakeEngine, out_of_memory
from tests.helpers.window import CPU, GPU


@pytest.fixture
def conversations(tmp_path: Path) -> Iterator[ConversationController]:
    store = ChatStore(tmp_path / "chats.sqlite")
    yield ConversationController(store, Settings(system_prompt="Be brief."))
    store.close()


class _Relay(QObject):
    """Re-emits the runner thread's signal in this thread."""

    loaded = Signal(object)


def _request(
    path: Path, hardware: HardwareInfo = CPU, choices: LoadChoices | None = None
) -> LoadRequest:
    model = resolve_file(path)
    return LoadRequest(
        model, hardware, choices or LoadChoices(n_ctx=512), profile=profile_local(model.path)
    )


def _load(qtbot: QtBot, engine: EngineController, request: LoadRequest) -> LoadOutcome:
    relay = _Relay()
    engine.runner.loaded.connect(relay.loaded)
    with qtbot.waitSignal(relay.loaded, timeout=5_000) as blocker:
        engine.load(request)
    outcome = blocker.args[0]
    assert isinstance(outcome, LoadOutcome)
    return outcome


def test_the_real_and_the_fake_engine_are_engine_like(fake: FakeEngine, tmp_path: Path) -> None:
    """Both go where the controllers take an engine (mypy checks these two lines)."""
    engines: list[EngineLike] = [fake, Engine(log_dir=tmp_path)]
    assert [type(e).__name__ for e in engines] == ["FakeEngine", "Engine"]


# -- loading -----------------------------------------------------------------------------


def test_a_device_out_of_memory_retries_with_fewer_layers_and_every_choice(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    """A load on the GPU that runs out of memory loads again with fewer layers, says so, and
    keeps what the user chose (as after Keep fastest: op offload off, threads, KV type)."""
    fake = FakeEngine(load_failures=[out_of_memory("CUDA0", requested=11 << 20)])
    engine = EngineController(fake)
    controller = ModelController(engine, Library(tmp_path / "models"), Settings(), engine)
    kept = LoadChoices(n_gpu_layers=-1, n_ctx=512, op_offload=False, n_threads=2, kv_type="q8_0")
    progress: list[float] = []
    controller.loadProgress.connect(progress.append)
    try:
        with qtbot.waitSignal(controller.loaded, timeout=5_000) as loaded:
            controller.load(_request(models["q4_k_m"], GPU, kept))
    finally:
        engine.shutdown()
    outcome = loaded.args[0]
    assert isinstance(outcome, LoadOutcome)
    first, retry = fake.configs
    assert first.n_gpu_layers == 5  # 4 layers + the output layer: everything asked for
    assert 0 < retry.n_gpu_layers < 5
    assert retry == replace(
        first, n_gpu_layers=retry.n_gpu_layers, tensor_split=retry.tensor_split
    )  # nothing else changed: op offload, threads, KV type, context, batch, mmap
    assert (retry.op_offload, retry.n_threads, retry.type_k) == (False, 2, "q8_0")
    assert outcome.info.n_gpu_layers == retry.n_gpu_layers
    assert outcome.note.startswith("n_gpu_layers 5 did not fit in GPU memory, so MixDesk loaded")
    assert controller.info == outcome.info
    assert progress == [0.5, 1.0]  # the failed load reported none
    shiboken6.delete(engine)


def test_a_load_that_keeps_failing_reaches_the_user_as_one_sentence(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    fake = FakeEngine(load_failures=[out_of_memory(requested=1 << 30)] * 5)
    engine = EngineController(fake)
    controller = ModelController(engine, Library(tmp_path / "models"), Settings(), engine)
    try:
        with qtbot.waitSignal(controller.loadFailed, timeout=5_000) as failed:
            controller.load(_request(models["q4_k_m"], GPU, LoadChoices(n_gpu_layers=-1)))
    finally:
        engine.shutdown()
    assert fake.loads[0] == 5
    assert fake.loads == sorted(fake.loads, reverse=True)
    assert 1 < len(fake.loads) <= 3  # bounded
    assert user_message(failed.args[0]).startswith("The model does not fit in GPU memory")
    assert controller.info is None
    shiboken6.delete(engine)


# -- answers -----------------------------------------------------------------------------


def test_an_answer_streams_into_the_view(
    qtbot: QtBot,
    fake: FakeEngine,
    engine: EngineController,
    conversations: ConversationController,
    models: dict[str, Path],
) -> None:
    fake.answer = Answer(hold_after=2)  # "Hello from", then wait: the view shows it streaming
    answers = AnswerController(engine, conversations, engine)
    pane = ChatPane(answers, Settings())
    qtbot.addWidget(pane)
    answers.source = _load(qtbot, engine, _request(models["q2_k"])).info
    conversations.new()
    shown: list[str] = []
    answers.textArrived.connect(shown.append)
    speeds: list[tuple[GenerationStats, bool]] = []
    answers.speed.connect(lambda stats, final: speeds.append((stats, final)))
    pane.send("Say hello")
    qtbot.waitUntil(lambda: "Hello from" in pane.view.toPlainText(), timeout=5_000)
    assert answers.busy
    assert "".join(shown) == "Hello from"
    assert speeds[-1][0].eval_tokens == 2
    assert not speeds[-1][1]  # live figures, not the final ones
    with qtbot.waitSignal(answers.finished, timeout=5_000) as finished:
        fake.release()
    done = finished.args[0]
    assert isinstance(done, ChatDone)
    assert done.text == "Hello from the fake engine."
    assert "Hello from the fake engine." in pane.view.toPlainText()
    assert speeds[-1] == (done.stats, True)
    assert (done.stats.eval_tokens, done.stats.eval_tps) == (5, EVAL_TPS)
    stored = conversations.messages()
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Say hello"),
        ("assistant", "Hello from the fake engine."),
    ]
    assert stored[1].stats == done.stats


def test_stop_keeps_what_arrived(
    qtbot: QtBot,
    fake: FakeEngine,
    engine: EngineController,
    conversations: ConversationController,
    models: dict[str, Path],
) -> None:
    fake.answer = Answer(pieces=("One", " two", " three", " four"), hold_after=2)
    answers = AnswerController(engine, conversations, engine)
    answers.source = _load(qtbot, engine, _request(models["q2_k"])).info
    conversations.new()
    with qtbot.waitSignal(answers.textArrived, timeout=5_000):
        assert answers.send("Count")
    qtbot.waitUntil(lambda: conversations.messages()[-1].content == "One two", timeout=5_000)
    with qtbot.waitSignal(answers.finished, timeout=5_000) as finished:
        answers.stop()
    done = finished.args[0]
    assert (done.finish_reason, done.text) == ("cancelled", "One two")
    last = conversations.messages()[-1]
    assert (last.content, last.finish_reason) == ("One two", "cancelled")
    assert not answers.busy


def test_an_engine_death_mid_answer_forgets_the_model(
    qtbot: QtBot,
    fake: FakeEngine,
    engine: EngineController,
    conversations: ConversationController,
    models: dict[str, Path],
) -> None:
    death = EngineCrashedError("The engine was killed (SIGKILL) while answering.", returncode=-9)
    fake.answer = Answer(pieces=("Half", " an", " answer"), fail=death, fail_after=1)
    answers = AnswerController(engine, conversations, engine)
    answers.source = _load(qtbot, engine, _request(models["q2_k"])).info
    assert engine.model is not None
    conversations.new()
    with qtbot.waitSignal(answers.failed, timeout=5_000) as failed:
        answers.send("Talk")
    assert failed.args[0] is death
    after: tuple[object, object] = (answers.source, engine.model)
    assert after == (None, None)  # nothing answers until a new load
    last = conversations.messages()[-1]
    assert (last.content, last.finish_reason) == ("Half", "error")


# -- measuring ---------------------------------------------------------------------------


def test_measuring_finds_the_fastest_setting(
    qtbot: QtBot, fake: FakeEngine, engine: EngineController, models: dict[str, Path]
) -> None:
    fake.speed = lambda config: 10.0 * (config.n_threads or 1)
    measuring = MeasureController(engine, engine)
    request = _request(models["q2_k"])
    variants = [
        MeasureVariant("as planned", replace(request.choices, n_threads=2)),
        MeasureVariant("4 threads", replace(request.choices, n_threads=4)),
        MeasureVariant("1 thread", replace(request.choices, n_threads=1)),
    ]
    with qtbot.waitSignal(measuring.finished, timeout=5_000):
        assert measuring.start(request, variants)
    report = measuring.report
    assert report.finished
    assert [(r.variant.label, r.rounds) for r in report.results] == [
        ("as planned", (20.0, 20.0, 20.0)),
        ("4 threads", (40.0, 40.0, 40.0)),
        ("1 thread", (10.0, 10.0, 10.0)),
    ]
    assert measuring.fastest() == variants[1]
    assert [c.n_threads for c in fake.configs] == [2, 4, 1] * 3  # rounds interleaved
    assert engine.model is not None and engine.model.n_threads == 1  # the last load stays


# -- settings ----------------------------------------------------------------------------


def test_a_settings_change_is_a_signal_the_library_follows(
    qtbot: QtBot, engine: EngineController, tmp_path: Path, models: dict[str, Path]
) -> None:
    """The models folder moves the library when the settings say so, through
    :attr:`SettingsModel.changed`; nobody reads the settings file again."""
    settings = Settings()
    model = SettingsModel(settings)
    controller = ModelController(engine, Library(tmp_path / "models"), settings, engine)
    model.changed.connect(controller.settings_changed)
    moved = tmp_path / "moved"
    entry = import_model(models["q2_k"], library=Library(moved))
    with qtbot.assertNotEmitted(model.changed):
        assert model.apply(replace(settings)) == frozenset()  # nothing changed, nothing said
    with (
        qtbot.waitSignal(controller.libraryChanged, timeout=5_000) as changed,
        qtbot.waitSignal(model.changed) as said,
    ):
        model.apply(replace(settings, models_dir=str(moved), threads=3))
    assert said.args == [frozenset({"models_dir", "threads"})]
    assert changed.args[0].root == moved == controller.library.root
    assert [e.name for e in controller.library.entries()] == [entry.name]
    assert (settings.models_dir, settings.threads) == (str(moved), 3)  # the one object, in place
    assert Settings.load().models_dir == str(moved)  # and saved
