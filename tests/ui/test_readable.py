"""Every legend entry and table header stays whole at 1280x800, and at 150% scaling (the same
screen is then 853x533 logical pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QTableWidget
from pytestqt.qtbot import QtBot

from mixdesk.ui.main_window import MainWindow
from tests.helpers.window import GPU, make_window


def _cut_headers(window: MainWindow) -> list[str]:
    cut = []
    for table in window.findChildren(QTableWidget):
        header = table.horizontalHeader()
        metrics = header.fontMetrics()
        for col in range(table.columnCount()):
            item = table.horizontalHeaderItem(col)
            label = item.text() if item is not None else ""
            if header.sectionSize(col) < metrics.horizontalAdvance(label) + 8:
                cut.append(f"{label} ({header.sectionSize(col)} px)")
    return cut


@pytest.mark.parametrize("size", [(1280, 800), (853, 533)])
def test_offload_legend_and_table_headers_are_whole(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path], size: tuple[int, int]
) -> None:
    window = make_window(qtbot, tmp_path, GPU)
    window.resize(*size)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    bars = window.offload.bars
    for tab in (window.offload, window.manager, window.offload):
        window.tabs.setCurrentWidget(tab)
        qtbot.waitExposed(tab)
    assert bars.devices  # a GPU bar and the RAM bar are drawn
    for name, _color, rect in bars.legend_items():
        assert rect.right() <= bars.width(), name
        assert rect.bottom() <= bars.height(), name
    window.tabs.setCurrentWidget(window.manager)
    qtbot.waitExposed(window.manager)
    assert _cut_headers(window) == []
    window.close()


def test_memory_bars_say_uses_x_of_y_free_and_explain_the_outline(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    """ "CPU RAM: 262.4 MiB of 64.00 GiB free" read as if only 262 MiB were free: the bars say
    what is used of what is free, by how much a device is short, and what the outline is."""
    from mixdesk.ui.widgets import OUTLINE_WORDS, device_words

    window = make_window(qtbot, tmp_path, GPU)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    bars = window.offload.bars
    ram = next(d for d in bars.devices if d.kind == "cpu")
    assert device_words(ram).startswith("CPU RAM: uses ")
    assert " of " in device_words(ram) and device_words(ram).endswith(" free")
    assert OUTLINE_WORDS in [name for name, _c, _r in bars.legend_items()]
    assert device_words(ram) in bars.toolTip()
    from dataclasses import replace

    short = replace(ram, free_bytes=ram.used_bytes - (1 << 30))
    assert device_words(short).endswith("1.00 GiB short, does not fit")
    window.close()
