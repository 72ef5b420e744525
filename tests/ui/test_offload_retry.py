"""The window's load on a GPU that runs out of memory for real: fewer layers, said, bounded."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.chat_store import ChatStore
from mixdesk.core.engine.rpc_server import RpcServerProcess
from mixdesk.core.hardware import MIB
from mixdesk.core.library import Library
from mixdesk.core.loading import MAX_LOAD_TRIES
from mixdesk.ui.main_window import MainWindow
from tests.conftest import OOM_SHAPE
from tests.core.test_device_oom import CountingEngine, Servers, device_hardware


def test_window_retries_a_device_out_of_memory_with_fewer_layers(
    qtbot: QtBot, tmp_path: Path, oom_model: Path, rpc_servers: Servers
) -> None:
    server: RpcServerProcess = rpc_servers(48 * MIB)
    engine = CountingEngine(log_dir=tmp_path / "logs")
    window = MainWindow(
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=engine,
        hardware=device_hardware(server),
        quiet=True,
    )
    qtbot.addWidget(window)
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
