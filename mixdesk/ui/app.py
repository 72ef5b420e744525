"""Starting the desktop app: QApplication, the crash dialog, the main window."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from types import TracebackType

log = logging.getLogger(__name__)

_START = time.perf_counter()


def _crash_dialog(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """sys.excepthook: log the traceback and show where the log is, instead of dying silently."""
    from mixdesk.errors import user_message
    from mixdesk.logsetup import app_log_path

    log.critical("unexpected error\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
    try:
        from PySide6.QtWidgets import QApplication, QMessageBox

        from mixdesk.ui.plain import message_box

        if QApplication.instance() is not None and not os.environ.get("MIXDESK_NO_DIALOGS"):
            message_box(
                None,
                f"{user_message(exc)}\n\nThe details are in the log: {app_log_path()}",
                icon=QMessageBox.Icon.Critical,
            ).exec()
    except Exception:  # noqa: BLE001, S110 - the hook itself must never raise; the log has it all
        pass


def run_app(argv: list[str] | None = None) -> int:
    """Open the MixDesk window and run until it closes."""
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from mixdesk import APP_ID, APP_NAME
    from mixdesk.core.hub.library import Library, models_dir
    from mixdesk.core.workspace.chat_store import ChatStore
    from mixdesk.core.workspace.settings import Settings
    from mixdesk.ui.main_window import MainWindow

    sys.excepthook = _crash_dialog
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName(APP_NAME)
    QGuiApplication.setDesktopFileName(APP_ID)
    # The composition root: the settings are read, and the library and the conversations
    # opened, once, here; the window and everything in it are handed these.
    settings = Settings.load()
    window = MainWindow(settings=settings, library=Library(models_dir(settings)), store=ChatStore())
    window.show()
    shown = time.perf_counter() - _START
    log.info("main window shown %.2f s after start", shown)
    if os.environ.get("MIXDESK_EXIT_AFTER_SHOW"):
        # startup measurement: report and quit once the event loop has painted the window
        def report() -> None:
            sys.stdout.write(f"shown {time.perf_counter() - _START:.3f}\n")
            sys.stdout.flush()
            window.close()

        QTimer.singleShot(0, report)
    status = int(app.exec())
    from mixdesk.ui.threads import BackgroundTask

    BackgroundTask.stop_all()  # work started as the window closed ends before the process does
    return status
