"""The first-run page: an empty library shows what this machine can run, from the local Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import Engine
from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.catalog import CatalogFile, CatalogModel
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import GIB, HardwareInfo
from mixdesk.core.onboarding.first_run import MIN_RECOMMENDED_TPS
from mixdesk.core.planning.calibration import CalibrationStore
from mixdesk.core.planning.planner import plan_offload
from mixdesk.core.planning.words import verdict
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.main_window import MainWindow
from tests.helpers.first_run import BIG_REPO, catalog_of, first_run_headers, serve_headers
from tests.helpers.hub_server import HubFile, HubRepo, HubState
from tests.helpers.machines import V100


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Mixtral 8x7B Q2_K and Q4_K_M and 8x22B Q4_K_M (split): real headers, sparse data."""
    return first_run_headers(tmp_path_factory.mktemp("first-run"))


def _window(
    qtbot: QtBot, tmp_path: Path, hardware: HardwareInfo, catalog: list[CatalogModel] | None
) -> MainWindow:
    window = MainWindow(
        settings=Settings.load(),
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=Engine(log_dir=tmp_path / "logs"),
        hardware=hardware,
        catalog=catalog,
        quiet=True,
    )
    qtbot.addWidget(window)
    window.show()
    return window


def test_empty_library_ranks_the_catalog_with_the_planners_verdicts(
    qtbot: QtBot, tmp_path: Path, hub: tuple[HubState, str], headers: dict[str, Path]
) -> None:
    state, _url = hub
    serve_headers(state, headers)
    catalog = catalog_of(headers)
    # a runtime overhead measured on this machine: the page plans as `mixdesk plan` does
    # (through loading.make_plan, with the measured overheads), not with the defaults
    store = CalibrationStore.default()
    store.path.parent.mkdir(parents=True, exist_ok=True)
    overheads = {f"{store.version} CUDA0": 2 * GIB}
    store.path.write_text(json.dumps({"format": 2, "overheads": overheads}))
    measured = store.read()
    assert measured.overheads == {"CUDA0": 2 * GIB}
    window = _window(qtbot, tmp_path, V100, catalog)
    # the ranking is delivered through the GUI thread's event loop, which runs only from here
    with qtbot.waitSignal(window.first_run.ranked, timeout=60_000):
        pass
    page = window.welcome
    assert window.chat_stack.currentWidget() is page
    # nothing measured yet: the page says its speeds are estimates and offers to measure
    assert "estimates until" in page.speeds.text()
    assert page.calibrate_button.isVisibleTo(page)
    assert "Tesla V100-SXM2-16GB" in page.machine.text()
    plans = {
        name: make_plan(profile_local(path), V100, LoadChoices(), calibration=measured)
        for name, path in (
            ("Q2_K", headers["Q2_K"]),
            ("Q4_K_M", headers["Q4_K_M"]),
            ("8x22b", headers["8x22b"]),
        )
    }
    assert plans["8x22b"].fit == "none"  # the test needs one that does not fit
    default = plan_offload(profile_local(headers["Q4_K_M"]), V100)
    assert default.n_gpu_layers > plans["Q4_K_M"].n_gpu_layers  # the overhead matters
    shown = dict(zip((c.model.quant for c in page.candidates), page.verdicts(), strict=True))
    assert len(page.candidates) == 3
    for c in page.candidates:
        key = "8x22b" if c.repo_id == BIG_REPO else str(c.model.quant)
        assert c.plan is not None and c.plan.n_gpu_layers == plans[key].n_gpu_layers
        text = page.verdicts()[page.candidates.index(c)]
        assert text == verdict(plans[key])
        if plans[key].fit != "none":
            assert plans[key].placement_words in text  # the planner's own words
    assert "too big for this machine" in shown.values()
    fitting = [
        (path.stat().st_size, key)
        for key, path in (("Q2_K", headers["Q2_K"]), ("Q4_K_M", headers["Q4_K_M"]))
        if (speed := plans[key].speed) is not None and speed.eval_tps >= MIN_RECOMMENDED_TPS
    ]
    best = max(fitting)[1]
    recommended = [c for c in page.candidates if c.recommended]
    assert [c.model.quant for c in recommended] == [best]
    # ranked by the predicted speed: the files that fit, faster first; the one too big last
    speeds = [c.plan.speed.eval_tps for c in page.candidates if c.fits and c.plan and c.plan.speed]
    assert len(speeds) == 2 and speeds == sorted(speeds, reverse=True)
    assert not page.candidates[-1].fits
    # the recommended file is marked and chosen for the button, wherever it ranks
    row = next(i for i, c in enumerate(page.candidates) if c.recommended)
    assert page.table.currentRow() == row
    marked = page.table.item(row, 0)
    assert marked is not None and marked.text().startswith("★ recommended")
    assert page.download_button.isEnabled()
    assert best in page.download_button.text()
    assert page.open_button.isEnabled() and page.connect_button.isEnabled()
    window.close()


CPU = HardwareInfo(
    ram_total_bytes=16 * GIB,
    ram_available_bytes=12 * GIB,
    physical_cores=2,
    logical_cores=2,
    gpus=[],
    gpu_offload=False,
)


def test_one_button_downloads_loads_with_the_plan_and_focuses_the_message_box(
    qtbot: QtBot, tmp_path: Path, hub: tuple[HubState, str], models: dict[str, Path]
) -> None:
    state, _url = hub
    model = models["q4_k_m"]
    name = "tiny-test.Q4_K_M.gguf"
    state.repos["test/tiny-GGUF"] = HubRepo(files={name: HubFile(data=model.read_bytes())})
    catalog = [
        CatalogModel(
            id="tiny",
            title="Tiny test Mixtral",
            repo_id="test/tiny-GGUF",
            layout="merged",
            instruct=True,
            files=[CatalogFile("Q4_K_M", name, model.stat().st_size)],
        )
    ]
    window = _window(qtbot, tmp_path, CPU, catalog)
    with qtbot.waitSignal(window.first_run.ranked, timeout=30_000):
        pass
    page = window.welcome
    assert page.candidates[0].recommended
    assert page.verdicts() == [verdict(page.candidates[0].plan)]
    assert page.verdicts()[0].startswith("CPU only (all 4 layers in RAM)")
    assert window.settings.download_speed_bps == 0.0
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000) as loaded:
        page.download_button.click()
    info = loaded.args[0]
    assert Path(info.path).name == name
    assert info.n_gpu_layers == 0  # the planned layers: CPU only here
    assert window.chat_stack.currentWidget() is window.chat
    assert window.focusWidget() is window.input
    assert window.settings.download_speed_bps > 0  # the next page shows download times
    assert [e.filename for e in window.models.library.entries()] == [name]
    window.close()
