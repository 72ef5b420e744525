"""Widgets that only display: the live speed, the per-device memory bars, the banner (the
chat view lives in :mod:`.chat_view`)."""

from __future__ import annotations

import itertools

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QPainter,
    QPen,
    QResizeEvent,
)
from PySide6.QtWidgets import QComboBox, QHeaderView, QLabel, QTableWidget, QWidget

from mixdesk.core.chat.words import prompt_speed_words
from mixdesk.core.engine import GenerationStats
from mixdesk.core.machine.hardware import format_bytes
from mixdesk.core.planning.types import DevicePlan
from mixdesk.ui.chat_view import ChatView, stats_line


class SpeedMeter:
    """The status bar's live speed: eval tok/s, the other figures, and a sparkline of tok/s
    across the answer (redrawn every fourth update while it streams, and at its end)."""

    def __init__(self) -> None:
        self.tps_label = QLabel("eval — tok/s")
        self.detail_label = QLabel("")
        self.sparkline = Sparkline()
        self._history: list[float] = []

    def widgets(self) -> tuple[QWidget, ...]:
        """What goes in the status bar, left to right."""
        return (self.detail_label, self.sparkline, self.tps_label)

    def reset(self) -> None:
        """A new answer starts."""
        self._history = []
        self.sparkline.set_values([])

    def clear(self) -> None:
        """No answer on screen (another conversation opened): no figures of an old one."""
        self.reset()
        self.tps_label.setText("eval — tok/s")
        self.detail_label.setText("")

    def show(self, stats: GenerationStats, *, final: bool = False) -> None:
        """Show the figures of the streaming answer (``final``: of the finished one)."""
        if stats.eval_tps:
            self._history.append(stats.eval_tps)
            if len(self._history) % 4 == 1 or final:
                self.sparkline.set_values(self._history)
        self.tps_label.setText(f"eval {stats.eval_tps:.1f} tok/s")
        self.detail_label.setText(
            f"{prompt_speed_words(stats.prompt_eval_tokens, tps=stats.prompt_tps)} · "
            f"first token {stats.ttft_s:.2f} s · "
            f"{stats.eval_tokens} tokens · context {stats.context_used}/{stats.context_size}"
        )


class Sparkline(QWidget):
    """Tokens per second across an answer, as a small line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumSize(120, 22)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(160, 24)

    def set_values(self, values: list[float]) -> None:
        self.values = values[-200:]
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802
        if len(self.values) < 2:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor("#2b7de9"), 1.5))
        w, h = self.width() - 2, self.height() - 2
        top = max(self.values) or 1.0
        step = w / (len(self.values) - 1)
        points = [(1 + i * step, 1 + h - v / top * h) for i, v in enumerate(self.values)]
        for (x1, y1), (x2, y2) in itertools.pairwise(points):
            p.drawLine(int(x1), int(y1), int(x2), int(y2))
        p.end()


_SEGMENTS = (
    ("weights", "#4e79a7"),
    ("KV cache", "#f28e2b"),
    ("compute", "#59a14f"),
    ("overhead", "#b07aa1"),
    ("margin", "#bab0ac"),
)
#: The legend's last entry: what the outline around a bar is.
OUTLINE_WORDS = "outline: free memory (red: does not fit)"


def device_words(d: DevicePlan) -> str:
    """A device's bar in words: "CUDA0: uses 14.2 GiB of 15.5 GiB free" (what the bar shows),
    and by how much it is short when it does not fit."""
    words = f"{d.name}: uses {format_bytes(d.used_bytes)} of {format_bytes(d.free_bytes)} free"
    if d.used_bytes > d.free_bytes:
        words += f" — {format_bytes(d.used_bytes - d.free_bytes)} short, does not fit"
    return words


class DeviceBars(QWidget):
    """One stacked bar per device: weights, KV cache, compute, overhead and margin against its size."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.devices: list[DevicePlan] = []
        self.setMinimumHeight(90)

    def set_devices(self, devices: list[DevicePlan]) -> None:
        self.devices = devices
        self.setToolTip("\n".join(device_words(d) for d in devices))
        self._fit_height()
        self.update()

    def legend_items(self) -> list[tuple[str, QColor, QRectF]]:
        """Each legend entry with its swatch-and-text rectangle: in rows that wrap, so every
        name stays whole however narrow the panel (at 150% scaling too)."""
        metrics = self.fontMetrics()
        line = metrics.height() + 4
        y = 4.0 + 40 * len(self.devices)
        x = 4.0
        items: list[tuple[str, QColor, QRectF]] = []
        entries = [*_SEGMENTS, (OUTLINE_WORDS, "")]
        for name, color in entries:
            w = 14 + metrics.horizontalAdvance(name)
            if x > 4 and x + w > self.width() - 4:
                x, y = 4.0, y + line
            items.append((name, QColor(color), QRectF(x, y, w, line)))
            x += w + 12
        return items

    def _fit_height(self) -> None:
        items = self.legend_items()
        self.setMinimumHeight(int(items[-1][2].bottom()) + 4)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit_height()

    def segments(self, d: DevicePlan) -> list[tuple[str, int]]:
        """The bar's parts in bytes."""
        return [
            ("weights", d.weights_bytes),
            ("KV cache", d.kv_bytes),
            ("compute", d.compute_bytes),
            ("overhead", d.overhead_bytes),
            ("margin", d.margin_bytes),
        ]

    def paintEvent(self, _event: object) -> None:  # noqa: N802
        p = QPainter(self)
        y = 4
        width = self.width() - 8
        for d in self.devices:
            scale = max(d.free_bytes, d.used_bytes, 1)
            over = d.used_bytes > d.free_bytes
            p.setPen(QColor("#c0392b" if over else "#333"))
            # elided to the bar's width: never cut mid-word, the whole text in the tooltip
            label = self.fontMetrics().elidedText(
                device_words(d), Qt.TextElideMode.ElideMiddle, int(width)
            )
            p.drawText(4, y + 12, label)
            x = 4.0
            for (name, size), (_, color) in zip(self.segments(d), _SEGMENTS, strict=True):
                w = width * size / scale
                p.fillRect(QRectF(x, y + 16, w, 14), QColor(color))
                x += w
                _ = name
            p.setPen(QPen(QColor("#c0392b" if over else "#555"), 2 if over else 1))
            p.drawRect(QRectF(4, y + 16, width * d.free_bytes / scale, 14))
            y += 40
        p.setPen(QColor("#333"))
        for name, swatch_color, rect in self.legend_items():
            swatch = rect.top() + (rect.height() - 10) / 2
            if name == OUTLINE_WORDS:
                p.setPen(QPen(QColor("#c0392b"), 2))
                p.drawRect(QRectF(rect.left() + 1, swatch + 1, 8, 8))
                p.setPen(QColor("#333"))
            else:
                p.fillRect(QRectF(rect.left(), swatch, 10, 10), swatch_color)
            text = rect.adjusted(14, 0, 0, 0)
            p.drawText(text, int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft), name)
        p.end()


def compact(combo: QComboBox, chars: int = 14) -> QComboBox:
    """A combo box whose longest item does not set the window's minimum width: it shrinks to
    ``chars`` characters (its items elide), its popup still shows them whole."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


def readable_headers(table: QTableWidget, *, stretch: int = 0) -> None:
    """Column ``stretch`` takes the spare width; the others fit their contents; no header
    label is ever cut (the narrowest column still shows the longest label)."""
    header = table.horizontalHeader()
    metrics = header.fontMetrics()
    labels = [
        item.text() if (item := table.horizontalHeaderItem(c)) is not None else ""
        for c in range(table.columnCount())
    ]
    header.setMinimumSectionSize(max(metrics.horizontalAdvance(t) for t in labels) + 24)
    for col in range(table.columnCount()):
        mode = (
            QHeaderView.ResizeMode.Stretch
            if col == stretch
            else QHeaderView.ResizeMode.ResizeToContents
        )
        header.setSectionResizeMode(col, mode)


class Banner(QLabel):
    """A highlighted message across the top of the window (e.g. "this build is CPU-only")."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.PlainText)  # it names GPUs and quotes commands
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setStyleSheet("background:#fff3cd;border:1px solid #e0c36c;padding:6px;")
        self.hide()

    def show_text(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))


__all__ = ["Banner", "ChatView", "DeviceBars", "SpeedMeter", "readable_headers", "stats_line"]
