"""The Settings page's conversation states: the disk and memory budgets for conversations'
saved KV states, what they take on disk now, and Clear.

Measuring and clearing walk the cache folder, so they run in a :class:`BackgroundTask`: the
window never waits for the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from mixdesk.core.engine.kv_store import KvStore
from mixdesk.core.machine.hardware import format_bytes
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import user_message
from mixdesk.ui.plain import ask_yes_no, plain
from mixdesk.ui.threads import BackgroundTask


def _gib_box(value: float, high: float, none: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, high)
    box.setDecimals(2)
    box.setSingleStep(0.5)
    box.setSuffix(" GiB")
    box.setSpecialValueText(none)  # shown at 0
    box.setValue(value)
    return box


def _used(store: KvStore, *, report: Any, cancel: threading.Event) -> int:
    return store.used_bytes()


def _clear(store: KvStore, *, report: Any, cancel: threading.Event) -> int:
    return store.clear()


class KvCacheSection(QWidget):
    """The budgets (rows added to the dialog's form), the bytes used and Clear.

    Args:
        form: the Settings dialog's form, which gets this section's rows.
        settings: the budgets shown first, and the cache folder (``Settings.kv_store``).

    Attributes:
        confirm: asks before clearing (a yes/no question; tests answer it).

    Signals:
        measured(int): the bytes the saved states take, measured (at first, after a clear).
        cleared(int): the bytes a clear freed.
    """

    measured = Signal(int)
    cleared = Signal(int)

    def __init__(self, form: QFormLayout, settings: Settings) -> None:
        super().__init__()
        self.store = settings.kv_store()
        self.disk = _gib_box(settings.kv_cache_gib, 1024.0, "none on disk")
        self.disk.setToolTip(
            "Disk space for conversations' saved KV states: a long conversation reopened, "
            "switched back to or continued after a restart goes on without reading its "
            "history again. The least recently used states go first."
        )
        self.memory = _gib_box(settings.kv_memory_gib, 256.0, "none in memory")
        self.memory.setToolTip(
            "Memory the engine keeps the last conversations' states in (switching back "
            "and forth then costs nothing)."
        )
        self.used = plain(QLabel("Measuring…"))
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Delete every saved state (the conversations stay)")
        self.clear_button.clicked.connect(self.clear)
        self.confirm: Callable[[str], bool] = self._ask
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.used, 1)
        row.addWidget(self.clear_button)
        form.addRow("Saved conversation states", self.disk)
        form.addRow("Engine memory for states", self.memory)
        form.addRow("", self)
        self._initial = settings.kv_cache_gib, settings.kv_memory_gib
        self._used_bytes = 0
        self.measure()

    def measure(self) -> None:
        """Measure what the saved states take (in a background thread)."""
        self.clear_button.setEnabled(False)
        task = BackgroundTask(_used, self.store)
        task.finished.connect(self._show_used)
        task.failed.connect(self._failed)
        task.start()

    def clear(self) -> None:
        """Delete every saved state, once the user has confirmed."""
        question = (
            f"Delete the saved conversation states ({format_bytes(self._used_bytes)})? The "
            "conversations stay; reopening a long one reads its history again, once."
        )
        if not self.confirm(question):
            return
        self.clear_button.setEnabled(False)
        self.used.setText("Clearing…")
        task = BackgroundTask(_clear, self.store)
        task.finished.connect(self._show_cleared)
        task.failed.connect(self._failed)
        task.start()

    def budgets(self) -> tuple[float, float]:
        """The edited disk and memory budgets (GiB; a value not edited stays as it was,
        not rounded to the box's decimals)."""
        disk, memory = (
            initial if abs(box.value() - initial) <= 0.51 * 10 ** -box.decimals() else box.value()
            for box, initial in zip((self.disk, self.memory), self._initial, strict=True)
        )
        return disk, memory

    def _show_used(self, used: int) -> None:
        self._used_bytes = used
        self.used.setText(f"Used now: {format_bytes(used)} on disk")
        self.clear_button.setEnabled(used > 0)
        self.measured.emit(used)

    def _show_cleared(self, freed: int) -> None:
        self.cleared.emit(freed)
        self.measure()

    def _failed(self, err: BaseException) -> None:
        self.used.setText(user_message(err))
        self.clear_button.setEnabled(True)

    def _ask(self, question: str) -> bool:
        return ask_yes_no(self, "Clear the saved states?", question)
