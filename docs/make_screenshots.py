"""Make the README's screenshots from the real app (offscreen), on a generated tiny model.

Usage: ``python docs/make_screenshots.py`` (writes docs/screenshots/*.png).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mixdesk.core.hardware import HardwareInfo
    from mixdesk.ui.main_window import MainWindow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
OUT = ROOT / "docs" / "screenshots"


def _spin(ms: int) -> None:
    """Run Qt's event loop for ``ms`` milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def main() -> int:
    """Open the window, drive it, grab PNGs."""
    from PySide6.QtWidgets import QApplication

    from mixdesk.core.chat_store import ChatStore
    from mixdesk.core.engine import Engine
    from mixdesk.core.hardware import GIB, MIB, GpuInfo, HardwareInfo
    from mixdesk.core.library import Library
    from mixdesk.ui.main_window import MainWindow
    from tests import model_factory as mf

    tmp = Path(tempfile.mkdtemp(prefix="mixdesk-shots-"))
    model = mf.make_model(tmp / "models-src", mf.TINY, "Q4_K_M", name="mixtral-tiny-demo")
    _app = QApplication.instance() or QApplication([])  # kept alive while the window runs
    hw = HardwareInfo(
        ram_total_bytes=32 * GIB,
        ram_available_bytes=28 * GIB,
        physical_cores=8,
        logical_cores=16,
        gpus=[GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16160 * MIB, 15860 * MIB)],
        gpu_offload=True,
    )
    window = MainWindow(
        store=ChatStore(tmp / "chats.sqlite"),
        library=Library(tmp / "models"),
        engine=Engine(log_dir=tmp / "logs"),
        hardware=hw,
        quiet=True,
    )
    window.resize(1400, 860)
    window.show()
    _main_window_shot(window, model)
    _offload_panel_shot(window, tmp, hw)
    _model_manager_shot(window, model)
    window.close()
    print(f"screenshots in {OUT}")
    return 0


def _main_window_shot(window: MainWindow, model: Path) -> None:
    """Load the tiny model and grab the window mid-answer."""
    from PySide6.QtCore import QEventLoop

    window.select_model_path(str(model))
    while window.offload.plan is None:
        _spin(20)
    loaded = QEventLoop()
    window.modelLoaded.connect(lambda _i: loaded.quit())
    window.load_selected()
    loaded.exec()
    window.set_sampling(
        max_tokens=0, seed=3
    )  # until the context is full: long enough to catch mid-answer
    window.rename_conversation("Mixture of experts")
    window.send("Explain how a mixture of experts routes each token, with a code example.")
    _spin(400)
    OUT.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(OUT / "main-window.png"))
    finished = QEventLoop()
    window.answerFinished.connect(lambda _d: finished.quit())
    window.stop()
    if window.busy:
        finished.exec()


def _offload_panel_shot(window: MainWindow, tmp: Path, hw: HardwareInfo) -> None:
    """The offload panel on the article's machine: Mixtral 8x7B Q4_K_M (header only) on a V100."""
    from mixdesk.core.model_profile import profile_local
    from tests import model_factory as mf

    mixtral = mf.mixtral_header_file(
        tmp / "mixtral", "Q4_K_M", legacy=True, name="mixtral-8x7b-instruct-v0.1.Q4_K_M"
    )
    window.tabs.setCurrentWidget(window.offload)
    window.offload.set_model(str(mixtral), profile_local(mixtral), hw)
    window.offload.ctx.setValue(2048)
    _spin(100)
    window.offload.grab().save(str(OUT / "offload-panel.png"))


def _model_manager_shot(window: MainWindow, model: Path) -> None:
    """The model manager listing a repository on a local Hub server, fit badges read."""
    import huggingface_hub.constants as c

    from tests.hub_server import HubFile, HubRepo, HubState, serve_hub

    state = HubState()
    demo = model.read_bytes()
    state.repos["TheBloke/Mixtral-tiny-GGUF"] = HubRepo(
        files={
            "mixtral-tiny.Q4_K_M.gguf": HubFile(data=demo),
            "mixtral-tiny.Q2_K.gguf": HubFile(data=demo),
        }
    )
    with serve_hub(state) as url:
        c.ENDPOINT = url
        c.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        window.tabs.setCurrentWidget(window.manager)
        window.manager.list_repo("TheBloke/Mixtral-tiny-GGUF")
        while (
            window.manager.files.rowCount() < 2 or "reading header…" in window.manager.badge_texts()
        ):
            _spin(20)
        _spin(100)
        window.grab().save(str(OUT / "model-manager.png"))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
