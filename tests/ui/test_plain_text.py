"""Text from a model file, the network or an exception shows as plain text: no markup, no links.
And a settings file with wrong values does not stop the window from opening."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import Engine
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.machine.hardware import GIB, HardwareInfo
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.main_window import MainWindow
from mixdesk.ui.offload_panel import OffloadPanel
from tests.helpers import model_factory as mf

#: What a hostile chat template's raise_exception() or a model's name could say.
HOSTILE = '<a href="file:///etc/passwd">Click to fix</a><b>bold</b><img src="http://evil/x">'
CPU = HardwareInfo(
    ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB, physical_cores=2, logical_cores=2
)


def _window(qtbot: QtBot, tmp_path: Path, *, quiet: bool) -> MainWindow:
    window = MainWindow(
        settings=Settings.load(),
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=Engine(log_dir=tmp_path / "logs"),
        hardware=CPU,
        quiet=quiet,
    )
    qtbot.addWidget(window)
    return window


def _close_next_message_box(seen: list[tuple[Qt.TextFormat, str, bool]]) -> None:
    """Record the next message box's format and text, then close it (works for modal ones too)."""

    def look() -> None:
        boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox)]
        visible = [b for b in boxes if b.isVisible()]
        if not visible:
            QTimer.singleShot(10, look)
            return
        box = visible[0]
        flags = box.textInteractionFlags()
        seen.append(
            (
                box.textFormat(),
                box.text(),
                bool(flags & Qt.TextInteractionFlag.LinksAccessibleByMouse),
            )
        )
        box.close()

    QTimer.singleShot(0, look)


def test_messages_from_models_show_as_plain_text(qtbot: QtBot, tmp_path: Path) -> None:
    window = _window(qtbot, tmp_path, quiet=False)
    seen: list[tuple[Qt.TextFormat, str, bool]] = []
    _close_next_message_box(seen)
    window.notify(f"The model's chat template rejected this conversation: {HOSTILE}.")
    qtbot.waitUntil(lambda: bool(seen), timeout=5_000)
    text_format, text, links = seen[0]
    assert text_format == Qt.TextFormat.PlainText
    assert text == f"The model's chat template rejected this conversation: {HOSTILE}."
    assert not links


def test_the_crash_dialog_shows_plain_text(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch, isolated_user_dirs: Path
) -> None:
    from mixdesk.ui.app import _crash_dialog

    monkeypatch.delenv("MIXDESK_NO_DIALOGS")
    seen: list[tuple[Qt.TextFormat, str, bool]] = []
    _close_next_message_box(seen)
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError as err:
        _crash_dialog(RuntimeError, err, err.__traceback__)
    qtbot.waitUntil(lambda: bool(seen), timeout=5_000)
    assert seen[0][0] == Qt.TextFormat.PlainText
    assert HOSTILE in seen[0][1]


def test_a_model_name_shows_as_plain_text(qtbot: QtBot, tmp_path: Path) -> None:
    model = mf.make_model(tmp_path, mf.with_changes(mf.TINY, name=HOSTILE), name="hostile")
    panel = OffloadPanel()
    qtbot.addWidget(panel)
    panel.set_model(resolve_file(model), profile_local(model), CPU)
    assert panel.title.textFormat() == Qt.TextFormat.PlainText
    assert HOSTILE in panel.title.text()
    for label in (panel.warning, panel.explanation):
        assert label.textFormat() == Qt.TextFormat.PlainText


@pytest.mark.parametrize(
    "content",
    [[], {"system_presets": ["not", "a", "dict"], "temperature": "hot", "top_k": None}],
    ids=["list", "wrong-types"],
)
def test_the_window_opens_with_a_bad_settings_file(
    qtbot: QtBot, tmp_path: Path, content: object
) -> None:
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    window = _window(qtbot, tmp_path, quiet=True)
    assert window.settings.system_presets == Settings().system_presets
    assert window.settings.temperature == Settings().temperature
