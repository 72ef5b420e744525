"""``mixdesk --qt-selftest``: can Qt start here? Run by ``mixdesk doctor`` in a child process.

It lives in the ui package so that the doctor (in the Qt-free core) never imports PySide6:
a Qt that crashes on import takes down only this child, and the doctor reports it.
"""

from __future__ import annotations

import os


def qt_selftest() -> int:
    """Start Qt offscreen and show a window; return 0 when it became visible."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication([])
    label = QLabel("MixDesk")
    label.show()
    app.processEvents()
    ok = label.isVisible()
    label.close()
    return 0 if ok else 1
