"""A background task reports in the thread that made it: whatever is connected to its signals,
a lambda included, runs in the GUI thread, never in the task's worker thread (PySide6 runs a
plain callable in the thread of the signal's sender; a task that moved itself to its thread
ran its receivers' widget code there and crashed the suite once in a while)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pytestqt.qtbot import QtBot

from mixdesk.ui.threads import DONE, BackgroundTask


def _work(*, report: Callable[[Any], None], cancel: threading.Event) -> int:
    report("half")
    return 42


def _fail(*, report: Callable[[Any], None], cancel: threading.Event) -> int:
    raise ValueError("bad input")


def _nothing(*, report: Callable[[Any], None], cancel: threading.Event) -> None:
    return None


def test_receivers_run_in_the_thread_that_made_the_task(qtbot: QtBot) -> None:
    gui = threading.get_ident()
    seen: list[tuple[str, object, bool]] = []
    task = BackgroundTask(_work)
    task.progress.connect(
        lambda value: seen.append(("progress", value, threading.get_ident() == gui))
    )
    task.finished.connect(
        lambda value: seen.append(("finished", value, threading.get_ident() == gui))
    )
    with qtbot.waitSignal(task.finished, timeout=10_000):
        task.start()
    assert seen == [("progress", "half", True), ("finished", 42, True)]

    failing = BackgroundTask(_fail)
    errors: list[tuple[type[BaseException], bool]] = []
    failing.failed.connect(lambda err: errors.append((type(err), threading.get_ident() == gui)))
    with qtbot.waitSignal(failing.failed, timeout=10_000):
        failing.start()
    assert errors == [(ValueError, True)]


def test_a_task_is_let_go_once_its_thread_has_ended(qtbot: QtBot) -> None:
    results: list[object] = []
    tasks = [BackgroundTask(_nothing) for _ in range(20)]
    for task in tasks:
        task.finished.connect(results.append)
        task.start()
    qtbot.waitUntil(lambda: not BackgroundTask._alive.intersection(tasks), timeout=10_000)
    assert results == [DONE] * 20
    assert all(task.runner_thread.isFinished() for task in tasks)
