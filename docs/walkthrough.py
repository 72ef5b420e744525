"""Walk through MixDesk as a new user does, in a real X window, and check it stays on screen.

Usage::

    python docs/walkthrough.py                 # 1024x700 and 1280x800, PNGs in docs/screenshots
    python docs/walkthrough.py --quick         # 1024x700 only (the test suite runs this)
    python docs/walkthrough.py --out /tmp/shots --sizes 1920x1080

For each screen size it starts its own Xvfb (``/usr/bin/Xvfb``, a free display number) and
runs the real app (:func:`mixdesk.ui.app.run_app`, in this process, on Qt's xcb platform)
with a fresh profile of its own (``MIXDESK_DATA_DIR``, ``MIXDESK_MODELS_DIR``, the XDG
folders, ``MIXDESK_HW=ram=16GiB,gpu=none``) and the Hugging Face Hub pointed at a closed local
port. It then does what a new user does, with clicks and key presses: the first run offline,
Open .gguf (a generated Mixtral-shaped model with random weights: its words are noise, the
layout is real), three turns, edit the second (both versions kept, "< 1/2 >"), Regenerate
(both answers kept), Stop during an answer, a second conversation and back, Delete (Undo
offered; nothing goes at once). After every step it checks that the window's frame lies
within the screen's available geometry, and it saves PNGs of the key steps. It exits 1 when
any check failed, naming the step.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PySide6.QtCore import SignalInstance
    from PySide6.QtWidgets import QWidget

    from mixdesk.core.engine import ChatDone
    from mixdesk.ui.main_window import MainWindow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIZES = ("1024x700", "1280x800")
#: The screenshots kept in the repository: (step, size); the README shows these.
SHOTS = {
    ("first-run-offline", "1280x800"),
    ("edit-versions", "1280x800"),
    ("stopped", "1280x800"),
    ("delete-undo", "1280x800"),
    ("regenerated", "1024x700"),
}
TURNS = (
    "What is a mixture of experts?",
    "How many experts run for each token?",
    "Why does that save memory bandwidth?",
)
EDITED = "How many of the eight experts run for each token, and who picks them?"
#: A step that waits longer than this (seconds) has failed (the first answer loads the model).
PATIENCE_S = 300
#: Xvfb takes no connections from the network.
LOCAL = ("-nolisten", "tcp")


class WalkError(AssertionError):
    """A step did not do what a user would expect."""


def main(argv: list[str] | None = None) -> int:
    """Walk through every size, each in a process of its own (its own X server and app)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024x700 only")
    parser.add_argument("--sizes", default=",".join(SIZES), help="e.g. 1024x700,1280x800")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--all-shots", action="store_true", help="every step at every size")
    parser.add_argument("--size", help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args(argv)
    if args.size:
        return _walk_one(args.size, args.out, all_shots=args.all_shots)
    sizes = [SIZES[0]] if args.quick else args.sizes.split(",")
    failed = []
    for size in sizes:
        command = [sys.executable, __file__, "--size", size, "--out", str(args.out)]
        if args.all_shots or args.quick:
            command.append("--all-shots")
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(size)
    print(f"walkthrough: {'FAILED at ' + ', '.join(failed) if failed else 'all steps passed'}")
    return 1 if failed else 0


# -- the X server and the profile ----------------------------------------------------------


@contextlib.contextmanager
def xvfb(width: int, height: int) -> Iterator[str]:
    """An Xvfb of ``width`` x ``height`` on a free display (it picks one: -displayfd)."""
    binary = shutil.which("Xvfb") or "/usr/bin/Xvfb"
    if not Path(binary).exists():
        raise SystemExit("walkthrough: Xvfb is not installed (Debian: apt-get install xvfb).")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [binary, "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24", *LOCAL],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise SystemExit("walkthrough: Xvfb did not start.")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_profile(folder: Path, display: str) -> None:
    """A new user's folders, a 16 GiB machine without a GPU, and no Hub: set before MixDesk,
    Qt or huggingface_hub is imported (they read these once)."""
    for var, sub in (
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
        ("HF_HOME", "hf"),
        ("MIXDESK_DATA_DIR", "data"),
        ("MIXDESK_MODELS_DIR", "models"),
    ):
        os.environ[var] = str(folder / sub)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        os.environ.pop(var, None)
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    os.environ["MIXDESK_HW"] = "ram=16GiB,gpu=none"
    os.environ["MIXDESK_NO_DIALOGS"] = "1"  # a crash is logged, not shown in a dialog
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    os.environ["DISPLAY"] = display


def _walk_one(size: str, out: Path, *, all_shots: bool) -> int:
    width, height = (int(n) for n in size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="mixdesk-walk-"))
    try:
        with xvfb(width, height) as display:
            fresh_profile(folder, display)
            walk = Walk(size, out, folder, all_shots=all_shots)
            walk.run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for line in walk.report:
        print(line)
    for failure in walk.failures:
        print(f"FAILED {size}: {failure}")
    sys.stdout.flush()
    return 1 if walk.failures else 0


# -- driving Qt ----------------------------------------------------------------------------


def spin(ms: int) -> None:
    """Run Qt's event loop for ``ms`` milliseconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def until(predicate: Callable[[], object], what: str, timeout_s: float = PATIENCE_S) -> None:
    """Run the event loop until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise WalkError(f"waited {timeout_s:.0f} s for {what}")
        spin(30)


def expect(signal: SignalInstance, action: Callable[[], object], what: str) -> tuple[Any, ...]:
    """Do ``action`` and run the event loop until ``signal`` fires; its arguments."""
    got: list[tuple[Any, ...]] = []

    def seen(*args: Any) -> None:
        got.append(args)

    signal.connect(seen)
    try:
        action()
        until(lambda: got, what)
    finally:
        signal.disconnect(seen)
    return got[0]


def click(widget: QWidget) -> None:
    """A left click in the middle of ``widget``."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    if not widget.isEnabled():
        raise WalkError(f"{widget.objectName() or type(widget).__name__} is disabled")
    QTest.mouseClick(widget, Qt.MouseButton.LeftButton)


def type_and_enter(window: MainWindow, text: str) -> None:
    """Type ``text`` into the message box (replacing what is there) and press Enter."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    box = window.input
    box.setFocus()
    QTest.keyClick(box, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClick(box, Qt.Key.Key_Delete)
    QTest.keyClicks(box, text)
    QTest.keyClick(box, Qt.Key.Key_Return)


def click_link(window: MainWindow, href: str) -> None:
    """Click the link ``href`` in the chat view ("edit:12", "version:12:-1"), where it shows."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextCursor
    from PySide6.QtTest import QTest

    view = window.view
    document = view.document()
    cursor = QTextCursor(document)
    start = end = -1
    for position in range(1, document.characterCount()):
        cursor.setPosition(position)  # the format of the character before ``position``
        if cursor.charFormat().anchorHref() == href:
            start = position - 1 if start < 0 else start
            end = position
        elif start >= 0:
            break
    if start < 0:
        raise WalkError(f"no link {href!r} in the chat view")
    cursor.setPosition(start)
    view.setTextCursor(cursor)
    view.ensureCursorVisible()
    spin(50)
    left = view.cursorRect(cursor)
    cursor.setPosition(end)
    right = view.cursorRect(cursor)
    point = (left.center() + right.center()) / 2  # the middle of the link's text
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier(0), point)


# -- the walk ------------------------------------------------------------------------------


class Walk:
    """The steps, each followed by the on-screen check."""

    def __init__(self, size: str, out: Path, folder: Path, *, all_shots: bool) -> None:
        self.size = size
        self.out = out
        self.folder = folder
        self.all_shots = all_shots
        self.failures: list[str] = []
        self.report: list[str] = []
        self.window: MainWindow | None = None

    def run(self) -> None:
        """Open the app as ``mixdesk`` does, walk once the event loop runs, then close it."""
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication

        from mixdesk.ui.app import run_app
        from tests.helpers import model_factory as mf

        with _quiet_stderr():  # llama.cpp's quantiser prints every tensor
            self.model = mf.make_model(
                self.folder / "Downloads", mf.TINY, "Q4_K_M", name="mixtral-tiny-demo"
            )
        app = QApplication.instance() or QApplication(sys.argv[:1])
        QTimer.singleShot(0, self._drive)
        run_app()
        del app

    def _drive(self) -> None:
        from PySide6.QtWidgets import QApplication

        from mixdesk.ui.main_window import MainWindow

        hook = sys.excepthook
        sys.excepthook = self._unexpected(hook)
        window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))
        self.window = window
        steps = (
            ("first run offline", self.first_run_offline),
            ("open a model", self.open_model),
            ("three turns", self.three_turns),
            ("edit the second", self.edit_second),
            ("regenerate", self.regenerate),
            ("stop an answer", self.stop_answer),
            ("switch conversations", self.switch_conversations),
            ("delete, undo offered", self.delete_conversation),
        )
        if os.environ.get("WALK_DEBUG"):
            _watch_width(window)
        try:
            window.activateWindow()  # no window manager gives it the keyboard: ask for it
            until(window.isActiveWindow, "the window to get the keyboard", 10)
            self.check_on_screen("start")
            for name, step in steps:
                started = time.monotonic()
                step()
                self.check_on_screen(name)
                self.report.append(
                    f"ok   {self.size}  {name:<22} {time.monotonic() - started:5.1f} s"
                )
        except Exception as err:  # noqa: BLE001 - every failure is reported, then the app closes
            self.failures.append(f"{type(err).__name__}: {err}")
            traceback.print_exc()
        finally:
            window.close()

    def _unexpected(self, hook: Callable[..., object]) -> Callable[..., None]:
        def record(kind: type[BaseException], err: BaseException, tb: Any) -> None:
            self.failures.append(f"unexpected {kind.__name__} in the app: {err}")
            traceback.print_exception(kind, err, tb)
            hook(kind, err, tb)

        return record

    # -- checks and pictures ---------------------------------------------------------------

    def check_on_screen(self, step: str) -> None:
        """The window's frame (title bar included) within the screen's available geometry."""
        spin(150)  # let layouts settle
        window = self.win
        room = window.screen().availableGeometry()
        frame = window.frameGeometry()
        if not room.contains(frame):
            self.failures.append(
                f"after '{step}' the window ({frame.width()}x{frame.height()} at "
                f"{frame.x()},{frame.y()}) exceeds the screen ({room.width()}x{room.height()})"
            )

    def shot(self, name: str) -> None:
        """Save the window as the X server shows it (a PNG of 256 colours: small files)."""
        from PySide6.QtCore import Qt
        from PySide6.QtGui import QImage

        if not self.all_shots and (name, self.size) not in SHOTS:
            return
        spin(300)  # the last paint reaches the framebuffer
        window = self.win
        image = window.screen().grabWindow(window.winId()).toImage()
        small = image.convertToFormat(
            QImage.Format.Format_Indexed8, Qt.ImageConversionFlag.ThresholdDither
        )
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"walk-{name}-{self.size}.png"
        if not small.save(str(path), quality=0):  # PNG: 0 is the smallest file
            raise WalkError(f"could not save {path}")

    @property
    def win(self) -> MainWindow:
        assert self.window is not None
        return self.window

    def messages(self) -> list[Any]:
        w = self.win
        return w.store.messages(w.conversation.id) if w.conversation is not None else []

    def answer(self, action: Callable[[], object], what: str) -> ChatDone:
        done: ChatDone = expect(self.win.answerFinished, action, what)[0]
        return done

    # -- the steps -------------------------------------------------------------------------

    def first_run_offline(self) -> None:
        """The welcome page of a new user, with the Hub out of reach."""
        w = self.win
        until(lambda: w.hardware.ram_total_bytes > 0, "the machine to be detected", 60)
        until(lambda: "Reading the catalog" not in w.welcome.status.text(), "the catalog", 120)
        if not w.center.welcoming:
            raise WalkError("a new user does not see the welcome page")
        if "16.00 GiB" not in w.welcome.machine.text():
            raise WalkError(f"MIXDESK_HW is not shown: {w.welcome.machine.text()!r}")
        self.shot("first-run-offline")

    def open_model(self) -> None:
        """Open .gguf… with a generated model (the file dialog answers with its path)."""
        from PySide6.QtWidgets import QFileDialog

        w = self.win
        chosen = (str(self.model), "GGUF models (*.gguf)")
        original = QFileDialog.getOpenFileName
        QFileDialog.getOpenFileName = staticmethod(lambda *_a, **_k: chosen)  # type: ignore[method-assign]
        try:
            click(w.model_bar.open_button)
        finally:
            QFileDialog.getOpenFileName = original  # type: ignore[method-assign]
        until(lambda: w.offload.plan is not None, "the model's plan", 60)
        if w.center.welcoming:
            raise WalkError("the chat does not show after opening a model")
        if not w.send_button.isEnabled():
            raise WalkError(f"Send is disabled after choosing a model: {w.send_button.toolTip()}")
        w.set_sampling(max_tokens=24, seed=7, temperature=0.8)  # as the Sampling… dialog does

    def three_turns(self) -> None:
        """Type, Enter, three times; the first Enter loads the chosen model."""
        for n, text in enumerate(TURNS, start=1):
            done = self.answer(functools.partial(type_and_enter, self.win, text), f"answer {n}")
            if done.finish_reason == "error":
                raise WalkError(f"answer {n} failed: {self.win.last_error}")
            roles = [m.role for m in self.messages()]
            if roles != ["user", "assistant"] * n:
                raise WalkError(f"after turn {n} the conversation is {roles}")
            self.check_on_screen(f"turn {n}")

    def edit_second(self) -> None:
        """Click "edit" on the second message, change it, send: both versions are kept."""
        w = self.win
        second = self.messages()[2]
        old_followers = [m.content for m in self.messages()[3:]]
        click_link(w, f"edit:{second.id}")
        if w.input.toPlainText() != second.content or w.send_button.text() != "Save and send":
            raise WalkError("edit did not put the message in the box with 'Save and send'")
        if not w.chat.editing_note.isVisible():
            raise WalkError("no note says what an edit does")
        self.answer(lambda: type_and_enter(w, EDITED), "the answer to the edited message")
        now = self.messages()
        if [m.content for m in now[:3:2]] != [TURNS[0], EDITED] or len(now) != 4:
            raise WalkError(f"after the edit the conversation is {[m.content for m in now]}")
        if (now[2].version, now[2].versions) != (2, 2) or "2/2" not in w.view.toPlainText():
            raise WalkError("the edited message does not show '2/2'")
        click_link(w, f"version:{now[2].id}:-1")  # back to the first version...
        old = self.messages()
        if old[2].content != TURNS[1] or [m.content for m in old[3:]] != old_followers:
            raise WalkError("the first version and what followed it are not kept")
        if "1/2" not in w.view.toPlainText():
            raise WalkError("the first version does not show '1/2'")
        self.shot("edit-versions")
        click_link(w, f"version:{old[2].id}:1")  # ...and forward to the edited one
        if self.messages()[2].content != EDITED:
            raise WalkError("the forward link does not go back to the edited version")

    def regenerate(self) -> None:
        """Regenerate the last answer: the old one stays as version 1 of 2."""
        w = self.win
        before = self.messages()[-1]
        self.answer(lambda: click(w.chat.regen_button), "the regenerated answer")
        after = self.messages()[-1]
        if after.id == before.id or (after.version, after.versions) != (2, 2):
            raise WalkError("the regenerated answer is not version 2 of 2")
        self.shot("regenerated")

    def stop_answer(self) -> None:
        """Ask for a long answer and press Stop while it streams: what arrived is kept."""
        w = self.win
        w.set_sampling(max_tokens=0)  # until the context is full: Stop must end it
        expect(w.speedShown, lambda: type_and_enter(w, "Count to ten thousand."), "streaming")
        done = self.answer(lambda: click(w.chat.stop_button), "the stopped answer")
        if done.finish_reason != "cancelled" or "stopped" not in w.view.toPlainText():
            raise WalkError(f"Stop ended the answer with {done.finish_reason!r}")
        self.shot("stopped")
        w.set_sampling(max_tokens=24)

    def switch_conversations(self) -> None:
        """Ctrl+N, one turn there, then click the first conversation in the list."""
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        w = self.win
        first = w.conversation
        assert first is not None
        QTest.keyClick(w, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
        until(lambda: w.conversation is not None and w.conversation.id != first.id, "Ctrl+N", 10)
        if w.tps_label.text() != "eval — tok/s":
            raise WalkError(f"a new conversation shows old speed figures: {w.tps_label.text()}")
        w.set_sampling(max_tokens=24, seed=7, temperature=0.8)  # its own sampling, short
        self.answer(lambda: type_and_enter(w, "A new topic: what is a GGUF file?"), "answer")
        panel = w.conversation_panel
        row = next(i for i in range(panel.list.count()) if panel.list.item(i).data(256) == first.id)
        item_rect = panel.list.visualItemRect(panel.list.item(row))
        QTest.mouseClick(
            panel.list.viewport(),
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier(0),
            item_rect.center(),
        )
        until(lambda: w.conversation is not None and w.conversation.id == first.id, "the switch")
        if TURNS[0] not in w.view.toPlainText():
            raise WalkError("the first conversation's messages are not shown after the switch")

    def delete_conversation(self) -> None:
        """Delete the open conversation: it leaves the list, Undo is offered, Undo brings it
        back (it is deleted for good only when the offer ends)."""
        w = self.win
        conv = w.conversation
        assert conv is not None
        panel = w.conversation_panel
        click(panel.delete_button)
        if not panel.undo_button.isVisible() or "Undo" not in panel.undo_button.text():
            raise WalkError("Delete offered no undo")
        listed = [panel.list.item(i).data(256) for i in range(panel.list.count())]
        if conv.id in listed or w.store.get(conv.id) is None:
            raise WalkError("the deleted conversation is still listed, or already gone for good")
        self.shot("delete-undo")
        click(panel.undo_button)
        until(lambda: w.conversation is not None and w.conversation.id == conv.id, "Undo")


def _watch_width(window: MainWindow) -> None:
    """WALK_DEBUG=1: each time the window grows, print what holds its minimum width."""
    from PySide6.QtCore import QTimer

    widest = [window.width()]

    def check() -> None:
        if window.width() > widest[0]:
            widest[0] = window.width()
            print(f"window grew to {window.width()} px; minimum widths:")
            _print_widths(window)

    timer = QTimer(window)
    timer.timeout.connect(check)
    timer.start(5)


def _print_widths(widget: QWidget, depth: int = 0) -> None:
    """The visible widgets at least 250 px wide at their minimum, as a tree."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QWidget

    floor = max(widget.minimumWidth(), widget.minimumSizeHint().width())
    if floor >= 250 and widget.isVisible():
        print(f"{'  ' * depth}{type(widget).__name__} {floor}")
        for child in widget.findChildren(
            QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly
        ):
            _print_widths(child, depth + 1)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what C code writes to stderr to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # PySide6 6.12 can abort at interpreter exit (a refcount fault)
