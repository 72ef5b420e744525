"""Issue 21 item 11, the smaller things: export, search, answers with no text, the prompt
speed of a regenerated answer (the real window, offscreen, real llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.ui.main_window import MainWindow
from tests.helpers.model_factory import BLANK_LINES, make_model
from tests.helpers.window import ask, load, make_window

#: What a model may write that a Markdown viewer would run or fetch.
HOSTILE = (
    'Here: <script>alert("x")</script> <img src="http://example.com/t.png">\n\n'
    "```html\n<b>code stays as written</b>\n```\n\nand `a<b` inline."
)


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    w = make_window(qtbot, tmp_path)
    yield w
    w.close()


def test_export_escapes_html_names_no_folder_and_starts_in_documents(
    window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import QStandardPaths
    from PySide6.QtWidgets import QFileDialog

    conv = window.conversations.ensure()
    window.store.update(conv.id, model="/home/someone/secret-folder/mixtral.Q4_K_M.gguf")
    window.store.add_message(conv.id, "user", "Show me <b>HTML</b>")
    window.store.add_message(conv.id, "assistant", HOSTILE)
    window.rename_conversation("Tags: a/b <i>")
    offered: list[str] = []

    def save_dialog(*args: object, **_kwargs: object) -> tuple[str, str]:
        offered.append(str(args[2]))
        return str(tmp_path / "out.md"), "Markdown (*.md)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)  # no modal dialog
    window.menus.export.trigger()
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    start = Path(offered[0])
    expected_folder = Path(documents) if Path(documents).is_dir() else Path.home()
    assert start.parent == expected_folder  # not the folder MixDesk was started in
    assert start.name == "Tags a b i.md"  # a title with a slash names no subfolder
    text = (tmp_path / "out.md").read_text()
    assert "<script>" not in text and "<img" not in text and "<b>HTML" not in text
    assert "&lt;script>" in text and "&lt;b>HTML&lt;/b>" in text
    assert "<b>code stays as written</b>" in text and "`a<b`" in text  # code as written
    assert "secret-folder" not in text and "/home/" not in text
    assert "Model: `mixtral.Q4_K_M.gguf`" in text
    window.conversations.export(tmp_path / "out.json", as_json=True)
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["model"] == "mixtral.Q4_K_M.gguf"
    assert data["messages"][1]["content"] == HOSTILE  # JSON keeps the text as written


def test_search_says_no_matches_and_highlights_hits(qtbot: QtBot, window: MainWindow) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor

    from mixdesk.ui.chat_pane import HIT_COLOUR

    conv = window.conversations.ensure()
    window.store.add_message(conv.id, "user", "Tell me about Llamas")
    window.store.add_message(conv.id, "assistant", "A llama is a camelid. LLAMA!")
    window.rename_conversation("Camelids")
    window.new_conversation()
    panel = window.conversation_panel
    window.search.setText("zebra")
    assert panel.list.count() == 0
    assert panel.no_matches.isVisibleTo(panel)
    assert "No matches for “zebra”" in panel.no_matches.text()
    window.search.setText("llama")
    assert not panel.no_matches.isVisibleTo(panel)
    assert panel.list.count() == 1
    panel.list.setCurrentRow(0)  # open the hit as a user does
    assert window.conversation is not None and window.conversation.title == "Camelids"
    hits = window.view.extraSelections()
    assert [s.cursor.selectedText().lower() for s in hits] == ["llama"] * 3
    assert all(s.format.background().color() == QColor(HIT_COLOUR) for s in hits)
    policy = panel.list.horizontalScrollBarPolicy()  # long titles elide, whole in tooltips
    assert policy == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert panel.list.item(0).toolTip() == "Camelids"
    window.search.setText("")  # no search: no marks left behind
    assert window.view.extraSelections() == []


def test_an_answer_of_blank_lines_says_why(qtbot: QtBot, tmp_path: Path) -> None:
    """Tokens but no text (line breaks): one sentence in the status bar, not "5 tokens"."""
    model = make_model(tmp_path / "m", BLANK_LINES, name="blank-lines")
    window = make_window(qtbot, tmp_path)
    load(qtbot, window, model)
    window.set_sampling(max_tokens=5, temperature=0.0)
    done = ask(qtbot, window, "Hello")
    assert done.text.strip() == "" and done.stats.eval_tokens == 5
    assert window.statusBar().currentMessage() == (
        "The model's 5 tokens were only spaces, line breaks or control tokens: nothing to show."
    )
    window.close()


def test_a_regenerated_answer_says_its_prompt_was_cached(
    qtbot: QtBot, window: MainWindow, models: dict[str, Path]
) -> None:
    """With the whole prompt in the KV cache llama.cpp reads only its last token again (and
    times no prompt speed): that is "prompt cached", not "prompt 0 tok/s"."""
    load(qtbot, window, models["q4_k_m"])
    # the model row says what is loaded; the status bar does not say it again (at 1024 px the
    # two lines ran into each other)
    assert window.model_bar.info.text().startswith("Mixtral tiny test")
    assert window.statusBar().currentMessage() == ""
    window.set_sampling(max_tokens=6)
    first = ask(qtbot, window, "First question")
    assert first.stats.prompt_eval_tokens > 0
    assert window.speed.detail_label.text().startswith(
        f"prompt {first.stats.prompt_tps:.0f} tok/s · "
    )
    with qtbot.waitSignal(window.answerFinished, timeout=30_000) as blocker:
        window.answers.regenerate()
    again = blocker.args[0]
    assert again.stats.prompt_eval_tokens <= 1  # the rest came from the cache
    detail = window.speed.detail_label.text()
    assert detail.startswith("prompt cached · ") and "0 tok/s" not in detail
    # the figures show under the answer and at the status bar's right, not a third time
    assert "tok/s" not in window.statusBar().currentMessage()


def test_deleting_a_long_titled_conversation_never_widens_the_window(
    qtbot: QtBot, window: MainWindow
) -> None:
    """The Undo button named the deleted conversation and widened the list, and the window
    with it (1117 px on a 1024 px screen in docs/walkthrough.py)."""
    window.rename_conversation("W" * 60)
    width = window.minimumSizeHint().width()
    window.conversation_panel.delete_button.click()
    qtbot.wait(50)  # the layouts take the new button's size
    panel = window.conversation_panel
    assert panel.undo_button.isVisibleTo(panel)
    assert "W" * 60 in panel.undo_button.toolTip()  # what comes back is still said
    assert window.minimumSizeHint().width() <= width
