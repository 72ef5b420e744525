"""Send, Regenerate and Stop are enabled only when they can do something, through a load, an
answer, a stop and an unload (real engine, tiny generated model)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.ui.main_window import MainWindow
from tests.helpers.window import load, make_window


def _states(window: MainWindow) -> tuple[bool, bool, bool]:
    chat = window.chat
    return (
        chat.send_button.isEnabled(),
        chat.regen_button.isEnabled(),
        chat.stop_button.isEnabled(),
    )


def test_send_regenerate_stop_follow_load_answer_stop_unload(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    chat = window.chat
    assert _states(window) == (False, False, False)  # nothing to answer with
    assert "Choose a model" in chat.send_button.toolTip()

    load(qtbot, window, models["f32"])
    assert _states(window) == (True, False, False)  # a model, but no answer to regenerate
    assert chat.send_button.toolTip() == ""

    window.set_sampling(max_tokens=0)  # until the context is full: it is stopped first
    seen: list[tuple[bool, bool, bool]] = []

    def while_streaming(_value: float) -> None:
        if not seen:
            seen.append(_states(window))
            chat.stop_button.click()

    window.speedShown.connect(while_streaming)
    with qtbot.waitSignal(window.answerFinished, timeout=30_000) as finished:
        window.input.setPlainText("Go on")
        chat.send_button.click()
    assert seen == [(False, False, True)]  # while answering only Stop
    assert finished.args[0].finish_reason == "cancelled"
    assert _states(window) == (True, True, False)  # an answer: it can be regenerated

    window.model_bar.unload_button.click()
    # the model stays chosen: Send loads it again (issue 21: choosing a model is enough)
    assert _states(window) == (True, False, False)
    assert "loads the chosen model" in chat.send_button.toolTip()
    assert "Nothing to regenerate" in chat.regen_button.toolTip()
    window.close()
