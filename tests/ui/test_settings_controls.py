"""Settings people can read (issue 21, item 10): the Models folder shows its default and has a
Browse button, the fields say what they do, and the flash-attention box never disagrees with
the KV cache type (a quantised KV cache needs flash attention: the engine turns it on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog, QPushButton
from pytestqt.qtbot import QtBot

from mixdesk.core.hub.library import models_dir
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.offload_panel import FLASH_FORCED_WORDS, OffloadPanel
from mixdesk.ui.settings_dialog import SettingsDialog


def test_the_models_folder_shows_its_default_and_browses(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MIXDESK_MODELS_DIR", raising=False)
    settings = Settings()
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    assert dialog.models_dir.text() == ""
    assert str(models_dir(settings)) in dialog.models_dir.placeholderText()
    chosen = tmp_path / "my models"
    asked: list[str] = []

    def pick(_parent: object, _title: str, start: str) -> str:
        asked.append(start)
        return str(chosen)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", pick)
    (browse,) = [b for b in dialog.findChildren(QPushButton) if b.text() == "Browse…"]
    browse.click()
    assert asked == [str(models_dir(settings))]  # it opens where models go today
    assert dialog.models_dir.text() == str(chosen)
    for field in (dialog.system_prompt, dialog.threads, dialog.overflow, dialog.models_dir):
        assert field.toolTip(), field


def test_flash_attention_follows_a_quantised_kv_cache(qtbot: QtBot) -> None:
    panel = OffloadPanel()
    qtbot.addWidget(panel)
    panel.set_defaults(LoadChoices(kv_type="f16", flash_attn=False))
    assert panel.flash.isEnabled() and not panel.flash.isChecked()
    panel.kv.setCurrentText("q8_0")
    # the engine turns flash attention on for a quantised V cache: the box says so
    assert panel.flash.isChecked() and not panel.flash.isEnabled()
    assert panel.flash.toolTip() == FLASH_FORCED_WORDS
    assert panel.choices().flash_attn
    panel.kv.setCurrentText("f16")
    assert panel.flash.isEnabled() and not panel.flash.isChecked()  # the user's own choice
    assert not panel.choices().flash_attn
    # saved settings with q8_0 show it on from the start
    panel.set_defaults(LoadChoices(kv_type="q4_0", flash_attn=False))
    assert panel.flash.isChecked() and not panel.flash.isEnabled()
