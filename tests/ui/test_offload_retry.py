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
    """The slider speaks llama.cpp's n_gpu_layers: the output layer comes first."""
    window = make_window(qtbot, tmp_path, GPU_8GIB)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    panel = window.offload
    assert panel.slider.maximum() == 5  # 4 layers + the output layer
    for value, words in (
        (0, "n_gpu_layers 0: all 4 layers in RAM"),
        (1, "n_gpu_layers 1: 0 of 4 layers + output on GPU"),
        (2, "n_gpu_layers 2: 1 of 4 layers + output on GPU"),
        (5, "n_gpu_layers 5: all 4 layers + output on GPU"),
    ):
        panel.slider.setValue(value)
        assert panel.slider_label.text().startswith(words)
    window.close()
