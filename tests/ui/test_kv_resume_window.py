"""The window keeps each conversation's KV state: switching back to a conversation reads only
its new message, the answer's footer says so, and a deleted conversation's saved states go
when its deletion becomes final (real window, real engine, generated model)."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.engine import GenerationStats
from mixdesk.core.engine.kv_format import read_header
from mixdesk.core.engine.kv_store import default_directory
from mixdesk.core.hub.pull import import_model
from mixdesk.ui.chat_view import stats_line
from mixdesk.ui.main_window import MainWindow
from tests.helpers.window import ask, load, make_window

#: A first message of a few dozen tokens for the tiny model.
LONG = " ".join(["mixture expert router token layer the"] * 4)


def _state_files() -> list[Path]:
    return sorted(default_directory().glob("*/*.mdkv"))


def _saved(count: int) -> bool:
    """Whether ``count`` state files are there (the engine's writer thread saves them)."""
    return len(_state_files()) == count


def _answer_in_two_conversations(qtbot: QtBot, window: MainWindow) -> tuple[int, int]:
    """Answer in a conversation A, then in a new one B; their ids."""
    window.set_sampling(max_tokens=8, seed=1)
    ask(qtbot, window, LONG)
    assert window.conversation is not None
    first = window.conversation.id
    window.new_conversation()
    window.set_sampling(max_tokens=8, seed=1)
    ask(qtbot, window, "Something else entirely, please.")
    assert window.conversation is not None
    return first, window.conversation.id


def test_switching_back_reads_only_the_new_message(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    load(qtbot, window, models["f32"])
    a, _b = _answer_in_two_conversations(qtbot, window)
    before = window.store.messages(a)
    window.conversation_panel.chosen.emit(a)  # as a click in the list does
    assert window.conversation is not None and window.conversation.id == a
    done = ask(qtbot, window, "And then?")
    stats = done.stats
    assert stats.reused_from == "memory"
    first_prompt = before[-1].stats
    assert first_prompt is not None
    # all of the first turn's prompt (and of its answer, as far as the text re-tokenizes the
    # same) is read from the kept state; only the rest is evaluated
    assert stats.prompt_reused >= first_prompt.prompt_tokens - 1
    assert stats.prompt_eval_tokens == stats.prompt_tokens - stats.prompt_reused
    words = f"{stats.prompt_reused} of {stats.prompt_tokens} prompt tokens cached"
    assert words in " ".join(window.view.toPlainText().split())
    # said under the answer; the status bar does not repeat an answer's figures
    assert "tok/s" not in window.statusBar().currentMessage()
    window.close()


def test_a_deleted_conversations_states_go_when_the_deletion_is_final(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    load(qtbot, window, models["f32"])
    a, b = _answer_in_two_conversations(qtbot, window)
    qtbot.waitUntil(lambda: len(_state_files()) == 2, timeout=10_000)  # the writer thread
    window.conversations.delete()  # B, the open one
    assert len(_state_files()) == 2  # Undo can still bring it back, with its state
    window.conversations.undo()
    assert window.conversation is not None and window.conversation.id == b
    window.conversations.delete()
    window.conversations.finish_delete()  # what the undo timer's end does
    files = _state_files()
    assert len(files) == 1
    assert window.store.get(b) is None and window.store.get(a) is not None
    window.close()


def test_the_footer_names_a_reused_prompt_only_when_it_is_worth_saying() -> None:
    # a BOS and a template's first marker shared with another conversation: no words
    def stats(reused: int, **kw: object) -> GenerationStats:
        return GenerationStats(
            prompt_tokens=100,
            prompt_reused=reused,
            prompt_eval_tokens=100 - reused,
            prompt_tps=400.0,
            **kw,  # type: ignore[arg-type]
        )

    assert "cached" not in stats_line(stats(2))
    assert "cached" not in stats_line(stats(20))
    line = stats_line(stats(99, reused_from="disk"))
    assert line.endswith(" · 99 of 100 prompt tokens cached")
    # a regenerated answer: only the last token read again, llama.cpp times no prompt speed
    assert "prompt cached" in stats_line(GenerationStats(prompt_tokens=100, prompt_eval_tokens=1))
    assert "prompt 0 tok/s" not in stats_line(
        GenerationStats(prompt_tokens=100, prompt_eval_tokens=1)
    )


def test_deleting_a_model_in_the_window_deletes_its_states(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    window = make_window(qtbot, tmp_path)
    manager = window.manager
    copy = manager.library.root / "to-delete.gguf"
    shutil.copy(models["f32"], copy)
    entry = import_model(copy, library=manager.library)
    window.set_sampling(max_tokens=8, seed=1)
    for path, count in ((Path(entry.path), 1), (models["q4_k_m"], 2)):
        with qtbot.waitSignal(window.models.profileReady, timeout=10_000):
            window.select_model_path(str(path))  # the second after the first: wait for it
        with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
            window.load_selected()
        info = window.models.info
        assert info is not None and info.path == str(path.resolve())
        window.new_conversation()
        window.set_sampling(max_tokens=8, seed=1)
        ask(qtbot, window, LONG)
        qtbot.waitUntil(partial(_saved, count), timeout=10_000)
    manager.refresh_library()
    rows = [manager.library_list.item(i).data(256) for i in range(manager.library_list.count())]
    manager.library_list.setCurrentRow(rows.index(entry.name))
    manager.confirm = lambda _question: True
    manager.delete_button.click()
    assert not copy.exists()
    (left,) = _state_files()  # the other model's
    assert read_header(left, max_bytes=1 << 30).model_path == str(models["q4_k_m"].resolve())
    window.close()
