"""The desktop window, offscreen, with the real engine on a tiny generated model."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
from mixdesk.core.hub.library import Library
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from mixdesk.ui.main_window import MainWindow
from tests.helpers.hub_server import HubFile, HubRepo, HubState
from tests.helpers.window import CPU, GPU, ask, load, make_window


def squash(text: str) -> str:
    """Text with runs of whitespace as one space (HTML rendering collapses them)."""
    return " ".join(text.split())


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    w = make_window(qtbot, tmp_path)
    yield w
    w.close()


def test_answer_streams_with_live_speed(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=2000)
    seen: list[float] = []
    shown: list[int] = []  # how much text the view held at each live update

    def update(tps: float) -> None:
        seen.append(tps)
        shown.append(len(squash(window.view.toPlainText())))

    window.speedShown.connect(update)
    # a bounded wait, not a speed test: 2000 tokens take 10 s here, minutes on a busy machine
    done = ask(qtbot, window, "Tell me a story", timeout=180_000)
    assert done.stats.eval_tokens == 2000
    assert len(seen) >= 3  # the label moved while the answer streamed
    assert len(set(shown[:-1])) >= 2  # the text grew in the view while the answer streamed
    assert window.tps_label.text() == f"eval {done.stats.eval_tps:.1f} tok/s"
    assert seen[-1] == done.stats.eval_tps
    assert squash(done.text)[:40] in squash(window.view.toPlainText())
    assert window.conversation is not None
    stored = window.store.messages(window.conversation.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == done.text
    assert stored[1].stats is not None and stored[1].stats.eval_tokens == 2000
    assert "2000 tokens" in window.view.toPlainText()


def test_stop_keeps_what_arrived(qtbot: QtBot, window: MainWindow, models: dict[str, Path]) -> None:
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=0)  # until the context is full
    window.speedShown.connect(lambda _v: window.stop())
    done = ask(qtbot, window, "Go on forever")
    assert done.finish_reason == "cancelled"
    assert window.conversation is not None
    answer = window.store.messages(window.conversation.id)[-1]
    assert answer.finish_reason == "cancelled"
    assert answer.content == done.text
    assert done.text
    assert "stopped" in window.view.toPlainText()


def test_regenerate_and_edit(qtbot: QtBot, window: MainWindow, models: dict[str, Path]) -> None:
    load(qtbot, window, models["q4_k_m"])
    window.set_sampling(max_tokens=12)
    ask(qtbot, window, "First question")
    assert window.conversation is not None
    before = window.store.messages(window.conversation.id)
    with qtbot.waitSignal(window.answerFinished, timeout=30_000):
        window.answers.regenerate()
    after = window.store.messages(window.conversation.id)
    assert [m.role for m in after] == ["user", "assistant"]
    assert after[1].id != before[1].id
    # nothing is deleted: the old answer is version 1 of 2, a click away
    assert (after[1].version, after[1].versions) == (2, 2)
    assert "2/2" in window.view.toPlainText()
    window.conversations.select_version(after[1].id, -1)
    shown = window.store.messages(window.conversation.id)
    assert shown[1].id == before[1].id and before[1].content in window.view.toPlainText()
    window.conversations.select_version(before[1].id, 1)
    # edit: a note says what will happen, Cancel leaves everything as it was
    window.chat.edit_message(after[0].id)
    assert window.input.toPlainText() == "First question"
    assert window.chat.editing_note.isVisibleTo(window.chat)
    assert window.send_button.text() == "Save and send"
    window.chat.cancel_edit.click()
    assert window.input.toPlainText() == "" and window.answers.editing is None
    assert window.send_button.text() == "Send"
    window.chat.edit_message(after[0].id)
    ask(qtbot, window, "Second, edited")
    final = window.store.messages(window.conversation.id)
    assert (final[0].role, final[0].content) == ("user", "Second, edited")
    assert len(final) == 2 and (final[0].version, final[0].versions) == (2, 2)
    window.conversations.select_version(final[0].id, -1)  # the first version and its answers
    old = window.store.messages(window.conversation.id)
    assert [m.content for m in old] == ["First question", after[1].content]


def test_conversation_survives_closing(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    first = make_window(qtbot, tmp_path)
    load(qtbot, first, models["q2_k"])
    first.set_sampling(max_tokens=8)
    done = ask(qtbot, first, "Remember me")
    first.close()
    second = make_window(qtbot, tmp_path)
    assert second.conversation is not None
    assert second.conversation.title == "Remember me"
    assert [m.content for m in second.store.messages(second.conversation.id)] == [
        "Remember me",
        done.text,
    ]
    assert squash(done.text)[:20] in squash(second.view.toPlainText())
    second.close()


def test_search_rename_delete_export(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    assert window.conversation is not None
    window.store.add_message(window.conversation.id, "user", "about llamas")
    window.rename_conversation("Llamas")
    window.new_conversation()
    window.search.setText("llama")
    assert window.conversation_panel.list.count() == 1
    window.search.setText("")
    assert window.conversation_panel.list.count() == 2
    window.conversations.open(window.store.conversations("Llamas")[0].id)
    window.conversations.export(tmp_path / "c.md", as_json=False)
    assert "# Llamas" in (tmp_path / "c.md").read_text()
    window.conversations.export(tmp_path / "c.json", as_json=True)
    assert '"title": "Llamas"' in (tmp_path / "c.json").read_text()


def test_slider_moves_the_bars_and_apply_reloads(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path, hardware=GPU)
    load(qtbot, window, models["f32"])
    panel = window.offload
    assert panel.plan is not None and panel.plan.fit == "full"
    full = panel.bars.devices[0].weights_bytes
    panel.slider.setValue(2)
    assert not panel.auto.isChecked()
    assert panel.plan.n_gpu_layers == 2
    assert panel.bars.devices[0].weights_bytes < full
    assert panel.bars.devices[-1].kind == "cpu"
    engine = window.controller.runner.engine
    assert isinstance(engine, Engine)
    pid = engine.pid
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000) as blocker:
        panel.apply.click()
    assert blocker.args[0].path == str(models["f32"])
    assert engine.pid != pid
    panel.auto.setChecked(True)
    assert panel.plan.n_gpu_layers == 5
    window.close()


def test_engine_killed_mid_answer(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=0)
    engine = window.controller.runner.engine
    assert isinstance(engine, Engine)
    pid = engine.pid
    assert pid is not None
    killed: list[int] = []

    def kill(_tps: float) -> None:
        # once: a live update already queued when the engine dies must not kill it again
        if window.busy and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    window.speedShown.connect(kill)
    window.input.setPlainText("Keep talking")
    window.send()
    qtbot.waitUntil(lambda: not window.busy, timeout=30_000)
    assert "SIGKILL" in window.last_error
    assert window.isVisible()
    assert window.conversation is not None
    answer = window.store.messages(window.conversation.id)[-1]
    assert answer.role == "assistant"
    assert answer.finish_reason == "error"
    assert answer.content  # the partial answer was saved
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        window.load_selected()  # and a new engine starts
    window.set_sampling(max_tokens=4)
    assert ask(qtbot, window, "Still there?").stats.eval_tokens == 4


def test_sending_without_a_model_says_so(window: MainWindow) -> None:
    window.send("hello")
    assert "Load a model first" in window.last_error


def test_model_manager_lists_and_downloads(
    qtbot: QtBot, window: MainWindow, hub: tuple[HubState, str], models: dict[str, Path]
) -> None:
    state, _ = hub
    state.repos["TheBloke/Mixtral-tiny-GGUF"] = HubRepo(
        files={
            "mixtral-tiny.Q4_K_M.gguf": HubFile(data=models["q4_k_m"].read_bytes()),
            "mixtral-tiny.Q2_K.gguf": HubFile(data=models["q2_k"].read_bytes()),
        }
    )
    state.throttle_bps = 8 << 20
    manager = window.manager
    manager.list_repo("TheBloke/Mixtral-tiny-GGUF")
    qtbot.waitUntil(lambda: manager.files.rowCount() == 2, timeout=10_000)
    qtbot.waitUntil(lambda: all(b == "CPU only" for b in manager.badge_texts()), timeout=10_000)
    # every speed says what it is: an estimate here (nothing measured in this test's folder)
    assert all(s.endswith("tok/s, estimate") for s in manager.speed_texts())
    seen: list[int] = []
    details: list[str] = []
    with qtbot.waitSignal(manager.downloadFinished, timeout=30_000) as blocker:
        q4 = next(m for m in manager.models if m.quant == "Q4_K_M")  # rows rank by speed
        row = manager.download("TheBloke/Mixtral-tiny-GGUF", q4)
        row.bar.valueChanged.connect(seen.append)
        row.bar.valueChanged.connect(lambda _v: details.append(row.detail.text()))
    assert blocker.args[0] == "mixtral-tiny.Q4_K_M"
    assert len(seen) >= 2 and seen[-1] == 1000
    # one unit system: the speed in MiB/s beside sizes in MiB
    assert any(" MiB at " in d and " MiB/s" in d for d in details), details
    assert (
        window.model_picker.findText(
            "mixtral-tiny.Q4_K_M",
            flags=__import__("PySide6.QtCore").QtCore.Qt.MatchFlag.MatchStartsWith,
        )
        >= 0
    )


def test_send_button_and_enter_key(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    from PySide6.QtCore import Qt

    load(qtbot, window, models["q2_k"])
    window.set_sampling(max_tokens=3)
    window.input.setPlainText("Clicked")
    with qtbot.waitSignal(window.answerFinished, timeout=30_000):
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)  # type: ignore[no-untyped-call]
    window.input.setPlainText("Typed")
    with qtbot.waitSignal(window.answerFinished, timeout=30_000):
        qtbot.keyClick(  # type: ignore[no-untyped-call]
            window.input, Qt.Key.Key_Return
        )
    assert window.conversation is not None
    users = [m.content for m in window.store.messages(window.conversation.id) if m.role == "user"]
    assert users == ["Clicked", "Typed"]
    window.input.setPlainText("line one")
    qtbot.keyClick(  # type: ignore[no-untyped-call]
        window.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier
    )
    assert window.input.toPlainText().count("\n") == 1  # Shift+Enter: a new line, not sent
    assert len(window.store.messages(window.conversation.id)) == 4


def test_gpu_banner_and_hardware_panel(window: MainWindow) -> None:
    idle_gpu = HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=12 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16 * GIB, 15 * GIB)],
        gpu_offload=False,
    )
    window.set_hardware(idle_gpu)
    assert window.banner.isVisible()
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in window.banner.banner.text()
    assert window.banner.install.isVisible()  # a source setup can rebuild from the app
    assert "Tesla V100-SXM2-16GB" in window.hardware_label.text()
    window.banner.dismiss.click()  # the user has read it: it stays away this session
    assert not window.banner.isVisible()
    window.set_hardware(idle_gpu)
    assert not window.banner.isVisible()
    window.set_hardware(CPU)
    assert "CPU only" in window.hardware_label.text()


def test_the_window_honours_mixdesk_hw(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal commands read MIXDESK_HW; the window ignored it."""
    from mixdesk.ui.main_window import detected_hardware

    monkeypatch.setenv("MIXDESK_HW", "vram=16GiB,ram=64GiB")
    hw = detected_hardware()
    assert hw.gpus and hw.gpus[0].free_bytes == 16 * GIB
    assert hw.ram_available_bytes == 64 * GIB


def test_measure_charts_speed_per_setting(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    load(qtbot, window, models["q4_k_m"])
    panel = window.offload
    with qtbot.waitSignal(window.measuring.finished, timeout=240_000):
        panel.measure.click()
    report = window.measuring.report
    labels = [r.variant.label for r in report.results]
    # On this CPU-only machine: the plan, flash attention toggled, half the threads (no GPU
    # layers to vary).
    assert labels[0] == "as planned" and "flash attention on" in labels
    assert not any("layers" in label for label in labels)
    assert all(len(r.rounds) == report.rounds >= 3 for r in report.results)
    assert all(median > 0 for _, median, _ in panel.chart.results)
    best = window.measuring.fastest()
    assert panel.keep_fastest.isEnabled() == (best is not None)
    if best is None:
        assert "No difference beyond noise" in panel.verdict.text()
        return
    assert best.label in panel.verdict.text()
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        panel.keep_fastest.click()
    # every setting the winner changed is in the panel, and the engine loaded the panel's
    assert panel.flash.isChecked() == best.choices.flash_attn
    assert (panel.threads.value() or None) == best.choices.n_threads
    assert window.controller.model is not None
    assert window.controller.model.n_threads == (best.choices.n_threads or 2)
    assert window.controller.model.flash_attn == panel.choices().flash_attn


def test_sampling_per_conversation(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    load(qtbot, window, models["q2_k"])
    window.set_sampling(max_tokens=5, temperature=0.0)
    assert window.conversation is not None
    assert window.conversation.sampling is not None
    assert window.conversation.sampling.max_tokens == 5
    assert ask(qtbot, window, "hi").stats.eval_tokens == 5
    window.new_conversation()
    assert window.conversation.sampling is not None
    assert window.conversation.sampling.max_tokens == window.settings.max_tokens


def test_crash_hook_logs_and_names_the_log(tmp_path: Path, isolated_user_dirs: Path) -> None:
    from mixdesk.logsetup import app_log_path, configure_logging
    from mixdesk.ui.app import _crash_dialog

    configure_logging()
    try:
        raise RuntimeError("boom in a slot")
    except RuntimeError as err:
        _crash_dialog(RuntimeError, err, err.__traceback__)
    assert "boom in a slot" in app_log_path().read_text()


def test_chat_with_a_saved_endpoint(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    import socket

    from mixdesk.core.serving.serve import ServeConfig, start_server
    from mixdesk.core.workspace.settings import load_endpoint_keys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = start_server(
        ServeConfig(
            LoadConfig(str(models["q2_k"]), n_ctx=512, n_threads=2), port=port, api_key="k3y"
        )
    )
    try:
        window.add_endpoint(f"http://127.0.0.1:{port}", api_key="k3y", name="My TGI")
        assert window.model_picker.currentText() == "Endpoint: My TGI"
        assert "k3y" not in window.settings.path().read_text()  # keys are kept apart from settings
        assert load_endpoint_keys()[server.url] == "k3y"
        window.set_sampling(max_tokens=6)
        done = ask(qtbot, window, "Hello, remote")
        assert done.stats.eval_tokens == 6
        assert window.tps_label.text() == f"eval {done.stats.eval_tps:.1f} tok/s"
    finally:
        server.stop()


def test_settings_and_sampling_dialogs_round_trip(window: MainWindow) -> None:
    from mixdesk.ui.settings_dialog import SamplingDialog, SettingsDialog

    dialog = SettingsDialog(window.settings, window)
    dialog.sampling.temperature.setValue(0.3)
    dialog.sampling.seed.setText("42")
    dialog.threads.setValue(3)
    edited = dialog.result_settings()
    assert (edited.temperature, edited.seed, edited.threads) == (0.3, 42, 3)
    sampling = SamplingDialog(SamplingParams(max_tokens=77), window)
    assert sampling.values().max_tokens == 77
    assert sampling.values().seed is None


def test_the_models_folder_setting_moves_the_library(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, models: dict[str, Path]
) -> None:
    from mixdesk.core.hub.pull import import_model
    from mixdesk.core.workspace.settings import Settings
    from mixdesk.ui.settings_dialog import SettingsDialog

    moved = tmp_path / "elsewhere"
    entry = import_model(models["q2_k"], library=Library(moved))
    assert window.model_picker.findData(entry.path) < 0
    dialog = SettingsDialog(window.settings, window)
    dialog.models_dir.setText(str(moved))
    with qtbot.waitSignal(window.models.libraryChanged, timeout=10_000):
        window.apply_settings(dialog.result_settings())
    assert Settings.load().models_dir == str(moved)
    assert window.models.library.root == moved
    assert window.manager.library.root == moved  # downloads go there too
    assert window.model_picker.findData(entry.path) >= 0
    assert [e.name for e in window.manager.library.entries()] == [entry.name]


def test_the_last_model_is_selected_at_start_up(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    from mixdesk.core.workspace.settings import Settings

    first = make_window(qtbot, tmp_path)
    load(qtbot, first, models["q2_k"])
    first.close()
    assert Settings.load().last_model == str(models["q2_k"])
    second = make_window(qtbot, tmp_path)
    qtbot.waitUntil(lambda: second.offload.plan is not None, timeout=10_000)
    assert second.model_picker.currentData() == str(models["q2_k"])
    assert second.offload.model_path == str(models["q2_k"])
    assert second.models.info is None  # selected, not loaded: loading stays the user's choice
    second.close()


def test_load_follows_the_context_kv_and_flash_settings(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    from mixdesk.core.workspace.settings import Settings

    Settings(n_ctx=768, kv_type="q8_0", flash_attn=True, threads=1).save()
    window = make_window(qtbot, tmp_path)
    window.select_model_path(str(models["q2_k"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000) as blocker:
        window.load_selected()
    info = blocker.args[0]
    assert (info.n_ctx, info.type_k, info.type_v, info.flash_attn) == (768, "q8_0", "q8_0", True)
    assert info.n_threads == 1
    window.close()


def test_speeds_say_when_they_are_measured(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    """Estimates say so until this machine is measured; then the panel, the Hardware tab and
    the plan's words say "measured on this machine"."""
    from dataclasses import replace

    from mixdesk.core.planning.calibration import Calibration
    from mixdesk.core.planning.speed import SpeedSource
    from mixdesk.core.planning.speed_defaults import default_speed_model

    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    assert "estimate" in window.offload.slider_label.text()
    assert "estimates until" in window.hardware_tab.calibration.text()
    measured = replace(default_speed_model([], 2), source=SpeedSource.MEASURED, error=0.12)
    window.set_calibration(Calibration(speed=measured))
    assert "measured on this machine" in window.offload.slider_label.text()
    assert "measured on this machine" in window.offload.explanation.text()
    assert "within about 12%" in window.hardware_tab.calibration.text()


def test_deleting_a_model_asks_and_says_what_it_frees(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    """Library -> Delete removed a 26 GB download at one click: it asks first, saying how
    much it frees, and a No keeps the file."""
    import shutil

    from mixdesk.core.hub.pull import import_model

    manager = window.manager
    copy = manager.library.root / "to-delete.gguf"
    shutil.copy(models["q2_k"], copy)
    import_model(copy, library=manager.library)
    manager.refresh_library()
    manager.library_list.setCurrentRow(0)
    asked: list[str] = []

    def answer(no: bool) -> None:
        def ask(question: str) -> bool:
            asked.append(question)
            return not no

        manager.confirm = ask

    answer(no=True)
    manager.delete_button.click()
    assert asked and "freeing" in asked[0] and copy.exists()
    answer(no=False)
    manager.delete_button.click()
    assert not copy.exists()
    assert "freed" in manager.status.text()


def test_the_streaming_answer_stays_in_its_block_with_a_live_speed_line(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    """The streaming text sat at the left edge outside its coloured block and the live speed
    was small text at the far bottom right that stayed after a switch: the text and its live
    speed line grow inside the answer's own block, and a switch clears the figures."""
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=3000)  # long enough for many updates of the line
    view = window.view
    lines: list[str] = []
    inside: list[bool] = []

    def update(_tps: float) -> None:
        lines.append(view.streaming_footer())
        answer = view.streaming  # the answer's own block (its frame)
        if answer is not None:  # where the streaming text goes is inside it
            start, end = answer.text_range()
            inside.append(
                answer.frame.firstPosition() <= start <= end <= answer.frame.lastPosition()
            )

    window.speedShown.connect(update)
    done = ask(qtbot, window, "Tell me a story", timeout=180_000)
    assert done.stats.eval_tokens == 3000
    assert inside and all(inside)  # the text grew inside the answer's block
    live = [line for line in lines if "tok/s" in line]
    assert len(live) >= 2 and len(set(live)) >= 2  # the footer moved while it streamed
    assert window.tps_label.text() != "eval — tok/s"
    window.new_conversation()
    assert window.tps_label.text() == "eval — tok/s"  # no old figures after a switch
    assert window.speed.detail_label.text() == ""


def test_choosing_a_model_is_enough_to_send(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    """After opening a .gguf, typing and pressing Enter gave a modal "Load a model first":
    sending with a model chosen loads it with the planned layers, then answers."""
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    loaded_before = window.controller.model
    assert loaded_before is None  # chosen, not loaded
    qtbot.waitUntil(window.send_button.isEnabled, timeout=5_000)
    window.set_sampling(max_tokens=4)
    with qtbot.waitSignal(window.answerFinished, timeout=60_000) as finished:
        window.input.setPlainText("Hello")
        window.send_button.click()
    assert finished.args[0].stats.eval_tokens >= 1
    assert window.last_error == ""  # no "Load a model first"
    assert window.models.info is not None  # it loaded
    assert window.conversation is not None
    roles = [m.role for m in window.store.messages(window.conversation.id)]
    assert roles == ["user", "assistant"]


def test_menus_and_shortcuts_a_desktop_app_has(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    from PySide6.QtGui import QGuiApplication, QKeySequence

    from mixdesk.ui.menus import about_text

    menus = window.menus
    titles = [a.text() for a in window.menuBar().actions()]
    assert titles == ["&File", "&Edit", "&Model", "&Help"]
    shortcuts = {
        menus.new_conversation: "Ctrl+N",
        menus.open_model: "Ctrl+O",
        menus.quit: "Ctrl+Q",
        menus.find: "Ctrl+F",
    }
    for action, keys in shortcuts.items():
        assert action.shortcut() == QKeySequence(keys)
    first = window.conversation
    menus.new_conversation.trigger()
    assert window.conversation is not None and window.conversation != first
    load(qtbot, window, models["f32"])
    window.set_sampling(max_tokens=4)
    done = ask(qtbot, window, "hi")
    menus.copy_answer.trigger()
    assert QGuiApplication.clipboard().text() == done.text
    menus.find.trigger()
    assert window.search.hasFocus() or not window.isActiveWindow()
    assert "llama-cpp-python 0.3.36" in about_text()


def test_your_own_system_prompt_per_conversation(qtbot: QtBot, window: MainWindow) -> None:
    """Not only four fixed presets: any text, kept per conversation, and saved presets of
    your own."""
    chat = window.chat
    first = window.conversation
    assert first is not None

    def prompt_of(conversation_id: int) -> str:
        conv = window.store.get(conversation_id)
        assert conv is not None
        return conv.system_prompt

    chat.system_text.setPlainText("You answer like a pirate.")
    qtbot.waitUntil(lambda: prompt_of(first.id) == "You answer like a pirate.", timeout=5_000)
    window.new_conversation()
    assert chat.system_text.toPlainText() == window.settings.system_prompt
    window.conversations.open(first.id)
    assert chat.system_text.toPlainText() == "You answer like a pirate."
    chat.add_preset("Pirate", "You answer like a pirate.")
    assert window.settings.system_presets["Pirate"] == "You answer like a pirate."
    assert chat.preset.currentText() == "Pirate"
    window.new_conversation()
    chat.preset.setCurrentIndex(chat.preset.findText("Pirate"))
    assert window.conversation is not None
    assert prompt_of(window.conversation.id) == "You answer like a pirate."
