"""The Settings page's conversation states: the budgets, what the saved states take on disk
(measured off the GUI thread) and Clear, which asks first (real window, real engine)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.engine.kv_store import default_directory
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.settings_dialog import SettingsDialog
from tests.helpers.window import ask, load, make_window


def _state_files() -> list[Path]:
    return sorted(default_directory().glob("*/*.mdkv"))


def test_the_budgets_round_trip_and_keep_what_was_not_edited(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings(kv_cache_gib=0.125, kv_memory_gib=1.0))
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.kv_cache.measured, timeout=10_000) as measured:
        pass
    assert measured.args == [0]
    assert not dialog.kv_cache.clear_button.isEnabled()  # nothing to clear
    edited = dialog.result_settings()
    assert (edited.kv_cache_gib, edited.kv_memory_gib) == (0.125, 1.0)  # not rounded
    dialog.kv_cache.disk.setValue(8.0)
    dialog.kv_cache.memory.setValue(0.0)
    assert dialog.kv_cache.memory.text() == "none in memory"
    edited = dialog.result_settings()
    assert (edited.kv_cache_gib, edited.kv_memory_gib) == (8.0, 0.0)
    assert edited.kv_cache("c").memory_budget_bytes == 0


def test_the_page_shows_what_the_states_take_and_clears_them_when_confirmed(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=8, seed=1)
    ask(qtbot, window, "Tell me about the rivers of France, please.")
    qtbot.waitUntil(lambda: len(_state_files()) == 1, timeout=10_000)  # the writer thread
    size = _state_files()[0].stat().st_size
    dialog = SettingsDialog(window.settings, window)
    section = dialog.kv_cache
    assert section.used.text() == "Measuring…"  # the folder is walked in a thread
    with qtbot.waitSignal(section.measured, timeout=10_000) as measured:
        pass
    assert measured.args == [size]
    assert f"{size / (1 << 20):.1f} MiB" in section.used.text()
    asked: list[str] = []

    def refuse(question: str) -> bool:
        asked.append(question)
        return False

    section.confirm = refuse
    section.clear_button.click()
    assert asked and "conversations stay" in asked[0]
    assert len(_state_files()) == 1  # refused: nothing deleted
    section.confirm = lambda _question: True
    freed: list[int] = []
    section.cleared.connect(freed.append)
    with qtbot.waitSignals([section.cleared, section.measured], timeout=10_000):
        section.clear_button.click()
    assert _state_files() == []
    assert freed == [size]
    assert section.used.text() == "Used now: 0.0 MiB on disk"
    dialog.close()
    window.close()
