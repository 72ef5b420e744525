"""The offload panel's choice of whose experts stay in RAM: shown, planned with, and kept by
Keep fastest (Measure's variant for the other end is a setting the panel shows)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.ui.offload_panel import OffloadPanel
from tests.helpers import model_factory as mf
from tests.helpers.machines import V100


def test_keep_fastest_shows_and_loads_the_other_end(qtbot: QtBot, tmp_path: Path) -> None:
    path = mf.mixtral_header_file(tmp_path, "Q4_K_M", legacy=True)
    panel = OffloadPanel()
    qtbot.addWidget(panel)
    panel.set_model(resolve_file(path), profile_local(path), V100)
    panel.strategy.setCurrentIndex(panel.strategy.findData("experts"))
    assert panel.plan is not None and panel.plan.experts_order == "last"  # the speed model's
    assert panel.experts_from.isEnabled() and panel.choices().experts_from is None
    winner = replace(panel.choices(), strategy="experts", experts_from="first")
    with qtbot.waitSignal(panel.applyRequested) as applied:
        panel.keep(winner)
    assert panel.experts_from.currentData() == "first"
    loaded: LoadChoices = applied.args[0]
    assert loaded.experts_from == "first" and loaded.strategy == "experts"
    kept = panel.plan
    assert kept is not None and kept.experts_order == "first"
    assert "experts of layers 0-" in panel.slider_label.text()
