"""Make the README's screenshots from the real app (offscreen), on a generated tiny model.

Usage: ``python docs/make_screenshots.py`` (writes docs/screenshots/*.png).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
OUT = ROOT / "docs" / "screenshots"


def main() -> int:
    """Open the window, drive it, grab PNGs."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from mixdesk.core.chat_store import ChatStore
    from mixdesk.core.engine import Engine
    from mixdesk.core.hardware import GIB, MIB, GpuInfo, HardwareInfo
    from mixdesk.core.library import Library
    from mixdesk.ui.main_window import MainWindow
    from tests import model_factory as mf
    from tests.hub_server import HubFile, HubRepo, HubState, serve_hub

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

    def spin(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    window.select_model_path(str(model))
    while window.offload.plan is None:
        spin(20)
    loaded = QEventLoop()
    window.modelLoaded.connect(lambda _i: loaded.quit())
    window.load_selected()
    loaded.exec()
    window.set_sampling(
        max_tokens=0, seed=3
    )  # until the context is full: long enough to catch mid-answer
    window.rename_conversation("Mixture of experts")
    window.send("Explain how a mixture of experts routes each token, with a code example.")
    spin(400)
    OUT.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(OUT / "main-window.png"))
    finished = QEventLoop()
    window.answerFinished.connect(lambda _d: finished.quit())
    window.stop()
    if window.busy:
        finished.exec()

    # the offload panel on the article's machine: Mixtral 8x7B Q4_K_M (header-only file) on a V100
    from mixdesk.core.model_profile import profile_local

    mixtral = mf.mixtral_header_file(
        tmp / "mixtral", "Q4_K_M", legacy=True, name="mixtral-8x7b-instruct-v0.1.Q4_K_M"
    )
    window.tabs.setCurrentWidget(window.offload)
    window.offload.set_model(str(mixtral), profile_local(mixtral), hw)
    window.offload.ctx.setValue(2048)
    spin(100)
    window.offload.grab().save(str(OUT / "offload-panel.png"))

    state = HubState()
    demo = model.read_bytes()
    state.repos["TheBloke/Mixtral-tiny-GGUF"] = HubRepo(
        files={
            "mixtral-tiny.Q4_K_M.gguf": HubFile(data=demo),
            "mixtral-tiny.Q2_K.gguf": HubFile(data=demo),
        }
    )
    import huggingface_hub.constants as c

    with serve_hub(state) as url:
        c.ENDPOINT = url
        c.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        window.tabs.setCurrentWidget(window.manager)
        window.manager.list_repo("TheBloke/Mixtral-tiny-GGUF")
        while (
            window.manager.files.rowCount() < 2 or "reading header…" in window.manager.badge_texts()
        ):
            spin(20)
        spin(100)
        window.grab().save(str(OUT / "model-manager.png"))
    window.close()
    print(f"screenshots in {OUT}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
