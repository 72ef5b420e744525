"""The window's load on a GPU that runs out of memory for real: fewer layers, said, bounded."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.loading.load import MAX_LOAD_TRIES
from mixdesk.core.machine.hardware import MIB
from tests.conftest import OOM_SHAPE
from tests.helpers.devices import CountingEngine, Servers, device_hardware
from tests.helpers.machines import GPU_8GIB
from tests.helpers.mixdesk_workers import WorkerProcess
from tests.helpers.window import make_window


def test_window_retries_a_device_out_of_memory_with_fewer_layers(
    qtbot: QtBot, tmp_path: Path, oom_model: Path, rpc_servers: Servers
) -> None:
    server: WorkerProcess = rpc_servers(48 * MIB)
    engine = CountingEngine(log_dir=tmp_path / "logs")
    window = make_window(qtbot, tmp_path, device_hardware(server), engine=engine)
    messages: list[str] = []
    window.userMessage.connect(messages.append)
    window.select_model_path(str(oom_model))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    everything = OOM_SHAPE.n_layers + 1
    window.offload.ctx.setValue(512)
    window.offload.auto.setChecked(False)
    window.offload.slider.setValue(everything)  # the user asks for every layer on the GPU
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000) as loaded:
        window.load_selected()
    info = loaded.args[0]
    assert 0 < info.n_gpu_layers < everything
    assert engine.loads[0] == everything and len(engine.loads) <= MAX_LOAD_TRIES
    assert any(f"n_gpu_layers {everything} did not fit in GPU memory" in m for m in messages)
    assert window.last_error == ""  # a note, not an error
    window.close()


def test_slider_says_where_the_output_layer_goes(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    """The slider leads with the layers on the GPU, and speaks llama.cpp's n_gpu_layers on a
    second line (the output layer comes first)."""
    window = make_window(qtbot, tmp_path, GPU_8GIB)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    panel = window.offload
    assert panel.slider.maximum() == 5  # 4 layers + the output layer
    for value, words in (
        (0, "all 4 layers in RAM"),
        (1, "0 of 4 layers + output on GPU"),
        (2, "1 of 4 layers + output on GPU"),
        (5, "all 4 layers + output on GPU"),
    ):
        panel.slider.setValue(value)
        first, second = panel.slider_label.text().split("\n")
        assert first.startswith(words)
        assert second == f"llama.cpp: n_gpu_layers {value}"
    window.close()


def test_a_setting_that_cannot_fit_asks_before_apply(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    """ "loading it may fail" when 12 GiB are missing (it will fail), while Apply stayed
    enabled: the panel says it will fail and by how much, and Apply asks first."""
    from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo

    tiny_gpu = HardwareInfo(
        ram_total_bytes=GIB // 4,
        ram_available_bytes=GIB // 8,
        physical_cores=2,
        logical_cores=2,
        gpus=[GpuInfo("Small GPU", "cuda", GIB // 8, GIB // 8)],
        gpu_offload=True,
    )
    window = make_window(qtbot, tmp_path, tiny_gpu)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    panel = window.offload
    panel.auto.setChecked(False)
    panel.slider.setValue(5)
    assert panel.plan is not None and panel.plan.fit == "none"
    assert "will fail" in panel.warning.text() and "more memory is needed" in panel.warning.text()
    asked: list[str] = []

    def refuse(question: str) -> bool:
        asked.append(question)
        return False

    panel.confirm = refuse
    applied: list[object] = []
    panel.applyRequested.connect(applied.append)
    panel.apply.click()
    assert asked and "Load it anyway?" in asked[0]
    assert applied == []  # the user said no
    panel.confirm = lambda _question: True
    panel.apply.click()
    assert len(applied) == 1
    window.close()
