"""A conversation longer than the context keeps answering under the default overflow policy,
and the chat says that older turns were left out (real engine, tiny model, small context)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.ui.main_window import MainWindow
from tests.helpers.window import ask, make_window

#: A question of a few dozen tokens for the tiny model.
LONG = " ".join(["mixture expert router token layer the"] * 3)


def _load_small_context(qtbot: QtBot, window: MainWindow, path: Path, n_ctx: int) -> None:
    window.select_model_path(str(path))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000) as loaded:
        window.load(replace(window.offload.choices(), n_ctx=n_ctx))
    assert loaded.args[0].n_ctx == n_ctx


def test_a_conversation_longer_than_the_context_keeps_answering(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    assert window.settings.context_overflow == "drop_oldest"  # the default policy
    _load_small_context(qtbot, window, models["f32"], 256)
    window.set_sampling(max_tokens=16, seed=1)
    dropped = []
    for i in range(8):  # 8 questions and answers: more than 256 tokens
        done = ask(qtbot, window, f"{i} {LONG}")
        assert done.finish_reason in ("stop", "length")
        dropped.append(done.dropped_messages)
    assert dropped[0] == 0 and dropped[-1] > 0
    assert window.conversation is not None
    stored = window.store.messages(window.conversation.id)
    assert len([m for m in stored if m.role == "user"]) == 8  # the conversation stays whole
    text = " ".join(window.view.toPlainText().split())
    assert f"{dropped[-1]} older messages of this conversation were left out" in text
    window.close()


def test_stop_at_the_limit_refuses_with_one_sentence(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    window.settings.context_overflow = "stop"
    _load_small_context(qtbot, window, models["f32"], 256)
    window.set_sampling(max_tokens=16, seed=1)
    failures: list[str] = []
    window.answers.failed.connect(lambda err: failures.append(str(err)))
    for i in range(8):
        with qtbot.waitSignal(
            window.answers.busyChanged, timeout=30_000, check_params_cb=lambda busy: not busy
        ):
            window.input.setPlainText(f"{i} {LONG}")
            window.send()
        if failures:
            break
    assert failures and "reached the context limit of 256 tokens" in failures[0]
    assert "stop at the limit" in window.last_error
    window.close()
