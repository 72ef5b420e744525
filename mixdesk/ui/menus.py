"""The menus and shortcuts a desktop app has: File, Edit, Model, Help (and Settings).

Every action calls what the window's buttons call; the menus add no behaviour of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMessageBox


@dataclass(frozen=True)
class MenuSlots:
    """What the window does for each menu entry (the same calls its buttons make)."""

    new_conversation: Callable[[], object]
    open_model: Callable[[], object]
    export: Callable[[], object]
    copy_answer: Callable[[], object]
    find: Callable[[], object]
    load: Callable[[], object]
    unload: Callable[[], object]
    measure: Callable[[], object]
    settings: Callable[[], object]
    about: Callable[[], object]


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


def _action(window: QMainWindow, text: str, slot: object, shortcut: str = "") -> QAction:
    action = QAction(text, window)
    if shortcut:
        action.setShortcut(QKeySequence(shortcut))
    action.triggered.connect(slot)
    return action


def build_menus(window: QMainWindow, slots: MenuSlots) -> Menus:
    """Add the menu bar to ``window``."""
    menus = Menus(
        new_conversation=_action(window, "&New conversation", slots.new_conversation, "Ctrl+N"),
        open_model=_action(window, "&Open model…", slots.open_model, "Ctrl+O"),
        export=_action(window, "&Export conversation…", slots.export),
        quit=_action(window, "&Quit", window.close, "Ctrl+Q"),
        copy_answer=_action(window, "&Copy last answer", slots.copy_answer, "Ctrl+Shift+C"),
        find=_action(window, "&Find in conversations", slots.find, "Ctrl+F"),
        load=_action(window, "&Load", slots.load, "Ctrl+L"),
        unload=_action(window, "&Unload", slots.unload),
        measure=_action(window, "&Measure speeds", slots.measure),
        settings=_action(window, "&Settings…", slots.settings, "Ctrl+,"),
        about=_action(window, "&About MixDesk", slots.about),
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


def copy_text(text: str) -> str:
    """Put ``text`` on the clipboard (when there is any); returns it."""
    if text:
        QGuiApplication.clipboard().setText(text)
    return text


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


def show_about(window: QMainWindow) -> None:
    """The About box."""
    QMessageBox.about(window, "About MixDesk", about_text())


def open_log_folder() -> None:
    """Open the folder with the app and engine logs in the file manager."""
    from mixdesk import paths

    folder = paths.ensure_dir(paths.log_dir())
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
