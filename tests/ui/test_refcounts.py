"""A long session ends normally: PySide6 6.12 on Python 3.11 releases ``None`` once per void
call (CPython gh-134989), which aborted the process ("none_dealloc") after a few thousand
renders and scrolls of the chat view (mixdesk.ui.refcounts keeps it alive)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.engine import GenerationStats
from mixdesk.ui.chat_view import ChatView

ROOT = Path(__file__).resolve().parents[2]

#: Renders, scrolls and streams of the chat view: more void Qt calls than None has references
#: when the process starts (about 5000), each cycle a dozen.
SESSION = textwrap.dedent(
    """
    import sys

    from PySide6.QtWidgets import QApplication

    from mixdesk.core.engine import GenerationStats
    from mixdesk.ui.chat_view import ChatView

    app = QApplication([])
    view = ChatView()
    view.resize(400, 300)
    view.show()
    stats = GenerationStats(eval_tokens=5, eval_tps=10.0)
    for i in range(int(sys.argv[1])):
        view.set_messages([])
        view.start_streaming()
        view.append_streaming("word " * 20)
        view._jump_to_bottom()
        view.show_streaming_stats(stats)
        app.processEvents()
    print("none", sys.getrefcount(None))
    """
)


def test_a_long_session_of_renders_and_scrolls_ends_without_an_abort(tmp_path: Path) -> None:
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, str(script), "600"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert "Fatal Python error" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 0  # None still has references of its own


def test_none_keeps_references_for_far_longer_sessions_than_this(qtbot: QtBot) -> None:
    view = ChatView()
    qtbot.addWidget(view)
    view.show()
    stats = GenerationStats(eval_tokens=5, eval_tps=10.0)
    before = sys.getrefcount(None)
    for _ in range(200):
        view.set_messages([])
        view.start_streaming()
        view.append_streaming("word " * 20)
        view._jump_to_bottom()
        view.show_streaming_stats(stats)
    after = sys.getrefcount(None)
    # Whatever this PySide6 takes per call (nothing, where it is fixed), a million sessions
    # like this one would not use up what None has left.
    assert after > (before - after) * 1_000_000
