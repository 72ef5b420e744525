"""Offline is a state, not a stream of pop-ups (issue 21, item 6): with the Hub down (a closed
port) the first-run page shows the built-in catalog with sizes and the planner's verdicts,
one line, Retry and another way to a file; a click on a catalog entry in the Models tab shows
one line with Retry; no dialog opens; Retry once the Hub is up brings the catalog back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication, QDialog
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import Engine
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.words import verdict
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.main_window import MainWindow
from mixdesk.ui.model_manager import OFFLINE_WORDS
from mixdesk.ui.welcome import ELSEWHERE_LINE, OFFLINE_LINE
from tests.conftest import _point_hub_at
from tests.helpers.first_run import REPO, catalog_of, first_run_headers, serve_headers
from tests.helpers.hub_server import HubState, serve_hub
from tests.helpers.machines import V100
from tests.helpers.net import free_port


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return first_run_headers(tmp_path_factory.mktemp("offline"))


@pytest.fixture
def down_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, ExitStack]]:
    """The Hub's address is a closed port; the test brings a real Hub up there later."""
    port = free_port()
    _point_hub_at(f"http://127.0.0.1:{port}", monkeypatch)
    with ExitStack() as stack:
        yield port, stack


def _dialogs() -> list[QDialog]:
    """Every dialog on screen (a QMessageBox is one)."""
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.isVisible()]


def _window(qtbot: QtBot, tmp_path: Path, headers: dict[str, Path]) -> MainWindow:
    window = MainWindow(
        settings=Settings.load(),
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=Engine(log_dir=tmp_path / "logs"),
        hardware=V100,
        catalog=catalog_of(headers),
        quiet=False,  # errors would open dialogs: none may
    )
    qtbot.addWidget(window)
    window.show()
    return window


def test_the_first_run_page_offline_shows_the_built_in_catalog_and_retry_restores_it(
    qtbot: QtBot, tmp_path: Path, headers: dict[str, Path], down_hub: tuple[int, ExitStack]
) -> None:
    port, stack = down_hub
    window = _window(qtbot, tmp_path, headers)
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000) as ranked:
        pass
    assert ranked.args[0].offline
    page = window.welcome
    assert _dialogs() == []
    # one line, Retry beside it, and how to get a file another way
    assert page.status.text() == OFFLINE_LINE
    assert page.retry_button.isVisible() and page.retry_button.isEnabled()
    assert page.elsewhere.isVisible() and page.elsewhere.text() == ELSEWHERE_LINE
    assert "Open a .gguf file" in ELSEWHERE_LINE
    assert page.open_button.isVisible() and page.connect_button.isVisible()
    assert "Hub" not in window.statusBar().currentMessage()  # said once, on the page
    # the built-in files with their sizes and the planner's verdicts, no network needed
    assert page.table.isVisible() and page.table.rowCount() == 3
    assert all(c.known for c in page.candidates)
    plans = {
        c.model.filename: make_plan(
            profile_local(headers[c.model.quant or ""] if c.repo_id == REPO else headers["8x22b"]),
            V100,
            LoadChoices(),
            calibration=Calibration(),
        )
        for c in page.candidates
    }
    for i, c in enumerate(page.candidates):
        size = page.table.item(i, 1)
        assert size is not None and size.text() == format_bytes(c.size)
        # the verdict from the known shape is the one the file's own header gives
        assert page.verdicts()[i] == verdict(plans[c.model.filename])
    assert "too big for this machine" in page.verdicts()
    assert not page.download_button.isVisible()  # downloads wait for the Hub
    # at 1280x800 beside the offload panel: no sideways scrolling, names and verdicts wrap
    window.resize(1280, 760)
    qtbot.wait(50)
    assert not page.table.horizontalScrollBar().isVisible()
    assert page.table.columnWidth(0) >= 200
    verdict_width = page.table.columnWidth(2)
    metrics = page.table.fontMetrics()
    for i in range(page.table.rowCount()):
        text = page.verdicts()[i]
        lines = -(-metrics.horizontalAdvance(text) // max(verdict_width - 12, 1))
        assert page.table.rowHeight(i) >= lines * metrics.height(), text

    # the Hub comes up where it was expected; Retry brings the catalog from it
    state = HubState()
    serve_headers(state, headers)
    stack.enter_context(serve_hub(state, port=port))
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000) as ranked:
        page.retry_button.click()
    assert not ranked.args[0].offline
    assert not page.retry_button.isVisible() and not page.elsewhere.isVisible()
    assert page.status.text() != OFFLINE_LINE
    assert page.table.rowCount() == 3 and not any(c.known for c in page.candidates)
    assert state.ranges  # planned from the remote headers now
    assert page.download_button.isVisible() and page.download_button.isEnabled()
    assert _dialogs() == []
    window.close()


def test_the_models_tab_offline_is_one_line_with_retry_and_no_dialog(
    qtbot: QtBot, tmp_path: Path, headers: dict[str, Path], down_hub: tuple[int, ExitStack]
) -> None:
    port, stack = down_hub
    window = _window(qtbot, tmp_path, headers)
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000):
        pass
    manager = window.manager
    window.tabs.setCurrentWidget(manager)
    messages: list[str] = []
    window.userMessage.connect(messages.append)
    for row in (0, 1, 0):  # every click on a catalog entry, as the user did
        manager.catalog.setCurrentRow(row)
        qtbot.waitUntil(manager.offline.isVisible, timeout=30_000)
        qtbot.waitUntil(manager.retry_button.isEnabled, timeout=30_000)
        assert _dialogs() == []
    assert messages == []  # nothing in the status bar: the tab says it, once
    assert manager.offline.text().startswith(OFFLINE_WORDS)
    assert manager.retry_button.isVisible()
    assert OFFLINE_WORDS not in manager.status.text()
    # the catalog entry's built-in files, with sizes and verdicts from their known shapes
    manager.catalog.setCurrentRow(0)
    qtbot.waitUntil(lambda: "reading header…" not in manager.badge_texts(), timeout=30_000)
    assert manager.files.rowCount() == 2
    assert all(v.known for v in manager.verdicts.values())
    assert not manager.download_button.isEnabled()

    state = HubState()
    serve_headers(state, headers)
    stack.enter_context(serve_hub(state, port=port))
    manager.retry_button.click()
    qtbot.waitUntil(lambda: not manager.offline.isVisible(), timeout=30_000)
    qtbot.waitUntil(
        lambda: len(manager.verdicts) == 2 and not any(v.known for v in manager.verdicts.values()),
        timeout=30_000,
    )
    assert manager.status.text() == f"2 models in {REPO}"
    assert manager.download_button.isEnabled()
    assert state.ranges  # the badges come from the remote headers now
    assert _dialogs() == [] and messages == []
    window.close()
