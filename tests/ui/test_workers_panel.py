"""The Hardware tab's workers, offscreen, with real `mixdesk worker` processes and the real engine:
add / test / remove (checked by a child process), one offload bar per device, and a worker
killed mid-answer (the partial answer is kept, the window stays usable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.workers_panel import WorkersPanel
from tests.helpers.mixdesk_workers import WorkerProcess
from tests.helpers.net import free_port
from tests.helpers.window import ask, make_window

Workers = Callable[..., WorkerProcess]


def add(qtbot: QtBot, panel: WorkersPanel, endpoint: str) -> None:
    with qtbot.waitSignal(panel.checked, timeout=30_000):
        panel.add(endpoint)


def test_add_test_and_remove_workers(qtbot: QtBot, workers: Workers) -> None:
    worker = workers()
    panel = WorkersPanel(Settings())
    qtbot.addWidget(panel)
    add(qtbot, panel, worker.endpoint)
    row = panel.row_text(worker.endpoint)
    assert "(CPU)" in row and "free of" in row and "link" in row
    [device] = panel.workers()
    assert (device.backend, device.endpoint) == ("rpc", worker.endpoint)
    assert device.free_bytes > 0 and device.link_bytes_per_s > 0
    assert Settings.load().workers == [worker.endpoint]  # kept for the next start

    nobody = f"127.0.0.1:{free_port()}"
    add(qtbot, panel, nobody)
    assert "cannot be reached" in panel.row_text(nobody)
    assert [d.endpoint for d in panel.workers()] == [worker.endpoint]  # only the one answering

    with qtbot.waitSignal(panel.message) as bad:
        panel.add("no port here")
    assert "is not HOST:PORT" in bad.args[0]

    worker.kill()
    with qtbot.waitSignal(panel.checked, timeout=30_000):
        panel.test(worker.endpoint)  # "test connection" again: it is gone now
    assert "cannot be reached" in panel.row_text(worker.endpoint)
    assert panel.workers() == []
    panel.remove(nobody)
    assert panel.endpoints() == [worker.endpoint]


def test_two_workers_one_bar_each_and_a_worker_lost_mid_answer(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path], workers: Workers
) -> None:
    a, b = workers(), workers()
    window = make_window(qtbot, tmp_path)
    for worker in (a, b):
        add(qtbot, window.workers_panel, worker.endpoint)
    assert [g.endpoint for g in window.hardware.gpus] == [a.endpoint, b.endpoint]
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    bars = window.offload.bars.devices
    assert [d.buffer_name for d in bars] == [f"RPC0[{a.endpoint}]", f"RPC0[{b.endpoint}]", "CPU"]
    assert all(d.weights_bytes > 0 for d in bars[:2])
    assert a.endpoint in window.hardware_label.text()

    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.load_selected()
    window.set_sampling(max_tokens=0)
    killed: list[bool] = []

    def kill(_tps: float) -> None:
        if window.busy and not killed:
            killed.append(True)
            b.kill()

    window.speedShown.connect(kill)
    window.input.setPlainText("Keep talking")
    window.send()
    qtbot.waitUntil(lambda: not window.busy, timeout=60_000)
    assert window.last_error == (
        f"The worker at {b.endpoint} went away while answering, which ended the engine; load "
        "the model again without that worker, or restart `mixdesk worker` there."
    )
    assert window.isVisible() and window.conversation is not None
    answer = window.store.messages(window.conversation.id)[-1]
    assert answer.role == "assistant" and answer.finish_reason == "error"
    assert answer.content  # the partial answer was kept

    window.workers_panel.remove(b.endpoint)  # and the model loads again without it
    assert [g.endpoint for g in window.hardware.gpus] == [a.endpoint]
    qtbot.waitUntil(lambda: len(window.offload.bars.devices) == 2, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=60_000):
        window.load_selected()
    window.set_sampling(max_tokens=4)
    assert ask(qtbot, window, "Still there?").stats.eval_tokens == 4
    window.close()
