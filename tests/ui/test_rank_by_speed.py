"""The first-run page and the Models tab rank files by the speed the planner predicts for this
machine, and say "measured on this machine" once it is (issue 20, item 6)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import Engine
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import GIB, HardwareInfo
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.speed import SpeedModel, SpeedSource
from mixdesk.core.planning.speed_defaults import default_speed_model
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.main_window import MainWindow
from mixdesk.ui.model_manager import ModelManager
from tests.helpers.first_run import REPO, catalog_of, first_run_headers, serve_headers
from tests.helpers.hub_server import HubState

#: Both 8x7B files fit in RAM (CPU only); the 8x22B file does not.
CPU_64 = HardwareInfo(
    ram_total_bytes=64 * GIB,
    ram_available_bytes=60 * GIB,
    physical_cores=4,
    logical_cores=4,
    gpus=[],
    gpu_offload=False,
)
MAIN = {"Q2_K": "Q2_K", "Q4_K_M": "Q4_K"}


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return first_run_headers(tmp_path_factory.mktemp("rank"))


def _estimated_order(headers: dict[str, Path]) -> list[str]:
    """The 8x7B quants, faster first, as the default (estimated) speed model predicts."""
    speeds = {
        q: make_plan(profile_local(headers[q]), CPU_64, LoadChoices(), calibration=Calibration())
        for q in MAIN
    }
    order = sorted(MAIN, key=lambda q: speeds[q].speed.eval_tps, reverse=True)  # type: ignore[union-attr]
    assert speeds[order[0]].speed.eval_tps > speeds[order[1]].speed.eval_tps  # type: ignore[union-attr]
    return order


def _measured_favouring(quant: str) -> Calibration:
    """What `mixdesk calibrate` could measure on a machine where ``quant``'s main type
    dequantises far faster than the other's (Q2_K on few cores is compute-bound)."""
    base: SpeedModel = default_speed_model([], CPU_64.physical_cores)
    rates = {t: 1e9 for t in base.cpu.eval_bytes_per_s}
    rates[MAIN[quant]] = 40e9
    cpu = replace(base.cpu, eval_bytes_per_s=rates)
    return Calibration(speed=replace(base, cpu=cpu, source=SpeedSource.MEASURED, error=0.1))


def test_the_first_run_page_ranks_by_the_calibrated_speed(
    qtbot: QtBot, tmp_path: Path, hub: tuple[HubState, str], headers: dict[str, Path]
) -> None:
    state, _url = hub
    serve_headers(state, headers)
    window = MainWindow(
        settings=Settings.load(),
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=Engine(log_dir=tmp_path / "logs"),
        hardware=CPU_64,
        catalog=catalog_of(headers),
        quiet=True,
    )
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000):
        pass
    page = window.welcome
    estimated = _estimated_order(headers)
    assert [c.model.quant for c in page.candidates[:2]] == estimated
    assert not page.candidates[2].fits  # the 8x22B file: too big, last
    assert all(v.endswith("tok/s, estimate") for v in page.verdicts()[:2])
    headers_read = len(state.ranges)

    # the machine is measured: the slower file by the estimate is the faster one here
    slower = estimated[1]
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000):
        window.set_calibration(_measured_favouring(slower))
    assert [c.model.quant for c in page.candidates[:2]] == [slower, estimated[0]]
    assert all(v.endswith("tok/s, measured on this machine") for v in page.verdicts()[:2])
    assert page.verdicts()[2] == "too big for this machine"
    assert len(state.ranges) == headers_read  # ranked again from the headers already read
    window.close()


def test_the_models_tab_ranks_by_the_calibrated_speed(
    qtbot: QtBot, tmp_path: Path, hub: tuple[HubState, str], headers: dict[str, Path]
) -> None:
    state, _url = hub
    serve_headers(state, headers)
    manager = ModelManager(CPU_64, Library(tmp_path / "models"), catalog=catalog_of(headers))
    qtbot.addWidget(manager)
    manager.list_repo(REPO)

    def planned() -> bool:
        texts = manager.badge_texts()
        return len(texts) == 2 and "reading header…" not in texts

    qtbot.waitUntil(planned, timeout=30_000)
    estimated = _estimated_order(headers)
    assert [m.quant for m in manager.models] == estimated
    assert manager.badge_texts() == ["CPU only", "CPU only"]
    speeds = manager.speed_texts()
    assert all(s.startswith("about ") and s.endswith("tok/s, estimate") for s in speeds)

    slower = estimated[1]
    manager.set_calibration(_measured_favouring(slower))
    qtbot.waitUntil(
        lambda: all(s.endswith("measured on this machine") for s in manager.speed_texts()),
        timeout=30_000,
    )
    assert [m.quant for m in manager.models] == [slower, estimated[0]]
    first, second = (float(s.split()[0]) for s in manager.speed_texts())
    assert first > second
