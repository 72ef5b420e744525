"""One way from "this model" to "loaded": every front end plans through mixdesk.core.loading.service.

The same model, machine and choices give the same LoadConfig in `mixdesk chat`, `mixdesk
serve` and the window; nothing but the load service builds a LoadConfig; Measure never has
two engines alive.
"""

from __future__ import annotations

import ast
from pathlib import Path

import psutil
import pytest
from pytestqt.qtbot import QtBot

from mixdesk.cli import build_parser
from mixdesk.commands.chat import load_request
from mixdesk.commands.serve import serve_config
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.measure import measure_variants
from mixdesk.core.machine.hardware import GIB, HardwareInfo, Overrides, apply_overrides
from mixdesk.core.workspace.settings import Settings
from tests.helpers.machines import GPU_8GIB
from tests.helpers.window import make_window

ROOT = Path(__file__).resolve().parent.parent


def test_load_config_is_built_only_by_the_load_service() -> None:
    builders = []
    for path in sorted((ROOT / "mixdesk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LoadConfig":
                builders.append(str(path.relative_to(ROOT)))
    assert set(builders) == {"mixdesk/core/loading/service.py"}


def test_a_llama_is_built_only_by_the_engine_session() -> None:
    """The engine and ``mixdesk serve`` load through one session module: nothing else builds a
    ``Llama`` or hands llama-cpp-python's server load settings of its own (serve used to
    re-code the engine's LoadConfig -> Llama translation in its ModelSettings)."""
    builders, settings = [], []
    for path in sorted((ROOT / "mixdesk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "Llama":
                builders.append(str(path.relative_to(ROOT)))
            if name == "ModelSettings":
                settings += [k.arg for k in node.keywords]
    assert set(builders) == {"mixdesk/core/engine/session.py"}
    assert set(settings) <= {"model", "model_alias", "chat_format"}


@pytest.mark.parametrize(
    "options",
    [
        ("--ngl", "2", "--ctx", "1024", "--threads", "2", "--kv-type", "q8_0"),
        ("--ctx", "0", "--flash-attn", "--batch", "256", "--no-mmap"),
        (
            "--ngl",
            "all",
        ),
        (),
    ],
)
def test_chat_serve_and_window_load_the_same(
    options: tuple[str, ...],
    models: dict[str, Path],
    qtbot: QtBot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = str(models["q4_k_m"])
    monkeypatch.setenv("MIXDESK_HW", "vram=700MiB/1GiB,ram=12GiB")
    parser = build_parser()
    library = Library(tmp_path / "models")
    request = load_request(parser.parse_args(["chat", model, *options]), library=library)
    chat = request.setup().config
    served = serve_config(parser.parse_args(["serve", model, *options]), library=library)[0].load
    assert chat == served

    # The window, with the same machine and the same choices made in its panel and settings.
    args = parser.parse_args(["chat", model, *options])
    hardware = apply_overrides(
        HardwareInfo(
            ram_total_bytes=16 * GIB,
            ram_available_bytes=12 * GIB,
            physical_cores=2,
            logical_cores=2,
        ),
        Overrides.from_env(),
    )
    settings = Settings.load()
    settings.threads = args.threads
    settings.save()
    window = make_window(qtbot, tmp_path, hardware)
    window.select_model_path(model)
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    panel = window.offload
    panel.kv.setCurrentText(args.kv_type)
    panel.flash.setChecked(args.flash_attn)
    if args.ctx is not None:
        panel.ctx.setValue(args.ctx)
    if args.ngl is not None:
        panel.auto.setChecked(False)
        panel.slider.setValue(args.ngl if args.ngl >= 0 else panel.slider.maximum())
    choices = panel.choices()
    choices = LoadChoices(  # what the window does not offer: batch and mmap
        n_gpu_layers=choices.n_gpu_layers,
        n_ctx=choices.n_ctx if args.ctx != 0 else 0,
        kv_type=choices.kv_type,
        flash_attn=choices.flash_attn,
        n_threads=choices.n_threads,
        n_batch=args.batch,
        use_mmap=not args.no_mmap,
    )
    gui_request = panel.request(choices)
    gui = gui_request.setup().config
    window.close()
    assert gui_request.model == request.model  # the same model, resolved the same way
    assert gui == chat


def engines_alive() -> int:
    """Engine processes running now (an ended one not yet reaped does not count)."""
    count = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "mixdesk.core.engine.process" in " ".join(
                child.cmdline()
            ):
                count += 1
        except psutil.Error:
            continue  # it ended while we looked
    return count


def test_measure_never_has_two_engines_alive(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path, GPU_8GIB)
    window.select_model_path(str(models["q4_k_m"]))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        window.load_selected()
    seen: list[int] = []
    with qtbot.waitSignal(window.measuring.finished, timeout=60_000):
        panel = window.offload
        assert panel.plan is not None and panel.profile is not None and panel.hardware
        window.measure(measure_variants(panel.choices(), panel.plan, panel.profile, panel.hardware))
        while window.measuring.running:
            seen.append(engines_alive())
            qtbot.wait(20)
    assert len(window.measuring.report.results) >= 3
    assert max(seen) == 1
    window.close()
