"""The menus and shortcuts a desktop app has: File, Edit, Model, Help (and Settings).

Every action calls what the window's buttons call; the menus add no behaviour of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QMessageBox

if TYPE_CHECKING:
    from mixdesk.ui.main_window import MainWindow


@dataclass(frozen=True)
class Menus:
    """The actions, by what they do (tests trigger them as a user would)."""

    new_conversation: QAction
    open_model: QAction
    export: QAction
    quit: QAction
    copy_answer: QAction
    find: QAction
    load: QAction
    unload: QAction
    measure: QAction
    settings: QAction
    about: QAction
    log_folder: QAction


def _action(window: MainWindow, text: str, slot: object, shortcut: str = "") -> QAction:
    action = QAction(text, window)
    if shortcut:
        action.setShortcut(QKeySequence(shortcut))
    action.triggered.connect(slot)
    return action


def build_menus(window: MainWindow) -> Menus:
    """Add the menu bar to ``window``."""
    menus = Menus(
        new_conversation=_action(window, "&New conversation", window.new_conversation, "Ctrl+N"),
        open_model=_action(window, "&Open model…", window.model_bar.open_button.click, "Ctrl+O"),
        export=_action(
            window, "&Export conversation…", window.conversation_panel.export_button.click
        ),
        quit=_action(window, "&Quit", window.close, "Ctrl+Q"),
        copy_answer=_action(
            window, "&Copy last answer", lambda: copy_last_answer(window), "Ctrl+Shift+C"
        ),
        find=_action(window, "&Find in conversations", window.search.setFocus, "Ctrl+F"),
        load=_action(window, "&Load", window.load_selected, "Ctrl+L"),
        unload=_action(window, "&Unload", window.model_bar.unload_button.click),
        measure=_action(window, "&Measure speeds", window.offload.measure.click),
        settings=_action(window, "&Settings…", window.open_settings, "Ctrl+,"),
        about=_action(window, "&About MixDesk", lambda: show_about(window)),
        log_folder=_action(window, "Open the &log folder", open_log_folder),
    )
    bar = window.menuBar()
    file_menu = bar.addMenu("&File")
    for a in (menus.new_conversation, menus.open_model, menus.export):
        file_menu.addAction(a)
    file_menu.addSeparator()
    file_menu.addAction(menus.settings)
    file_menu.addSeparator()
    file_menu.addAction(menus.quit)
    edit_menu = bar.addMenu("&Edit")
    edit_menu.addAction(menus.copy_answer)
    edit_menu.addAction(menus.find)
    model_menu = bar.addMenu("&Model")
    for a in (menus.load, menus.unload, menus.measure):
        model_menu.addAction(a)
    help_menu = bar.addMenu("&Help")
    help_menu.addAction(menus.about)
    help_menu.addAction(menus.log_folder)
    return menus


def copy_last_answer(window: MainWindow) -> str:
    """Put the open conversation's last answer on the clipboard; returns it ("" if none)."""
    messages = window.conversations.messages() if window.conversation is not None else []
    answer = next((m.content for m in reversed(messages) if m.role == "assistant"), "")
    if answer:
        QGuiApplication.clipboard().setText(answer)
        window.statusBar().showMessage("Last answer copied", 2000)
    return answer


def about_text() -> str:
    """MixDesk's version and the versions of what it runs on."""
    from importlib.metadata import PackageNotFoundError, version

    from PySide6 import __version__ as pyside_version

    from mixdesk import __version__

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (
        f"MixDesk {__version__}\n\nllama-cpp-python {of('llama-cpp-python')}\n"
        f"huggingface_hub {of('huggingface_hub')}\nPySide6 {pyside_version}"
    )


def show_about(window: MainWindow) -> None:
    """The About box (not during tests: they read :func:`about_text`)."""
    if not window.quiet:
        QMessageBox.about(window, "About MixDesk", about_text())


def open_log_folder() -> None:
    """Open the folder with the app and engine logs in the file manager."""
    from mixdesk import paths

    folder = paths.ensure_dir(paths.log_dir())
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
