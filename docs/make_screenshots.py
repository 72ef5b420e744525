"""Make the README's screenshots from the real app in a real X window (Xvfb), 1280x800.

Usage: ``python docs/make_screenshots.py`` (writes docs/screenshots/*.png). Without a
``DISPLAY`` it starts its own Xvfb (Debian: ``apt-get install xvfb`` plus Qt's xcb libraries,
see the README's Quick start); the pictures are grabbed from the X server's framebuffer, as a
user would see them. Shown: the first-run page (the catalog ranked for a 16 GB V100 from a
local Hub server), a two-turn conversation on a generated model (random weights: the words
are noise, the layout is real), the offload panel for Mixtral 8x7B Q4_K_M on that V100, and
the model manager with fit badges.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from mixdesk.ui.main_window import MainWindow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
SIZE = (1280, 800)


def _x_display() -> subprocess.Popen[bytes] | None:
    """Use $DISPLAY, or start an Xvfb of 1280x800 for this run."""
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("make_screenshots: Xvfb is not installed (Debian: apt-get install xvfb).")
    display = ":93"
    proc = subprocess.Popen(
        [xvfb, display, "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    os.environ["DISPLAY"] = display
    return proc


def _spin(ms: int) -> None:
    """Run Qt's event loop for ``ms`` milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait(signal: object, timeout_ms: int = 120_000) -> None:
    """Run the event loop until ``signal`` fires."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(lambda *_a: loop.quit())  # type: ignore[attr-defined]
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def _shot(window: MainWindow, name: str, part: QWidget | None = None) -> None:
    """Grab the window (or ``part`` of it) from the X server's framebuffer."""
    from PySide6.QtCore import QPoint

    _spin(300)  # let the compositor-less X server show the last paint
    screen = window.screen()
    if part is None:
        image = screen.grabWindow(window.winId())
    else:
        at = part.mapTo(window, QPoint(0, 0))
        image = screen.grabWindow(window.winId(), at.x(), at.y(), part.width(), part.height())
    OUT.mkdir(parents=True, exist_ok=True)
    image.save(str(OUT / f"{name}.png"))
    print(f"  {name}.png {image.width()}x{image.height()}")


def main() -> int:
    """Open the window on the X display, drive it, grab PNGs."""
    xvfb = _x_display()
    try:
        return _make()
    finally:
        if xvfb is not None:
            xvfb.terminate()


def _make() -> int:
    import huggingface_hub.constants as hub_constants
    from PySide6.QtWidgets import QApplication

    from mixdesk.core.engine import Engine
    from mixdesk.core.hub.library import Library
    from mixdesk.core.workspace.chat_store import ChatStore
    from mixdesk.core.workspace.settings import Settings
    from mixdesk.ui.main_window import MainWindow
    from tests.helpers import model_factory as mf
    from tests.helpers.first_run import catalog_of, serve_headers
    from tests.helpers.hub_server import HubState, serve_hub
    from tests.helpers.machines import V100

    tmp = Path(tempfile.mkdtemp(prefix="mixdesk-shots-"))
    os.environ["XDG_DATA_HOME"] = str(tmp / "data")  # a fresh user: the first run
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    os.environ["MIXDESK_NO_DIALOGS"] = "1"
    headers = {
        q: mf.mixtral_header_file(
            tmp / "hub", q, legacy=True, name=f"mixtral-8x7b-instruct-v0.1.{q}"
        )
        for q in ("Q2_K", "Q4_K_M")
    }
    types = mf.modern_quant_types(tmp / "probe", "Q4_K_M", n_layers=56)
    headers["8x22b"] = mf.mixtral_header_file(
        tmp / "hub",
        "Q4_K_M",
        cfg=mf.MIXTRAL_8X22B,
        types=types,
        split_count=2,
        name="Mixtral-8x22B-v0.1-Q4_K_M",
    )
    model = mf.make_model(tmp / "models-src", mf.TINY, "Q4_K_M", name="mixtral-tiny-demo")
    app = QApplication.instance() or QApplication([])
    state = HubState()
    serve_headers(state, headers)
    with serve_hub(state) as url:
        hub_constants.ENDPOINT = url
        hub_constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        window = MainWindow(
            settings=Settings.load(),
            store=ChatStore(tmp / "chats.sqlite"),
            library=Library(tmp / "models"),
            engine=Engine(log_dir=tmp / "logs"),
            hardware=V100,
            catalog=catalog_of(headers),
            quiet=True,
        )
        window.resize(*SIZE)
        window.show()
        _wait(window.first_run.ranked)
        _shot(window, "first-run")
        _conversation(window, model)
        _offload_panel(window, headers["Q4_K_M"])
        _model_manager(window, headers)
        window.close()
    del app
    print(f"screenshots in {OUT}")
    return 0


def _conversation(window: MainWindow, model: Path) -> None:
    """Two short turns with the tiny model: roles, footers, the speed line."""
    window.select_model_path(str(model))
    while window.offload.plan is None:
        _spin(20)
    window.load_selected()
    _wait(window.modelLoaded)
    window.set_sampling(max_tokens=28, seed=3, temperature=0.8)
    window.rename_conversation("Mixture of experts")
    for text in (
        "How does a mixture of experts route each token?",
        "And why do only two experts run per token?",
    ):
        window.send(text)
        _wait(window.answerFinished)
    window.tabs.setCurrentWidget(window.offload)
    _shot(window, "conversation")


def _offload_panel(window: MainWindow, mixtral: Path) -> None:
    """The offload panel on the article's machine: Mixtral 8x7B Q4_K_M on a 16 GB V100."""
    from mixdesk.core.gguf.profile import profile_local
    from mixdesk.core.loading.model import resolve_file

    panel = window.offload
    window.tabs.setCurrentWidget(panel)
    panel.set_model(resolve_file(mixtral), profile_local(mixtral), window.hardware)
    panel.ctx.setValue(2048)
    _shot(window, "offload-panel", panel)


def _model_manager(window: MainWindow, headers: dict[str, Path]) -> None:
    """The model manager listing the Mixtral repository, fit badges read from headers."""
    from tests.helpers.first_run import REPO

    window.tabs.setCurrentWidget(window.manager)
    window.manager.list_repo(REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        window.manager.files.rowCount() < len(headers) - 1
        or "reading header…" in window.manager.badge_texts()
    ):
        _spin(50)
    _shot(window, "model-manager")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
