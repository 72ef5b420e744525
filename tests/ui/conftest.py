"""The window's tests: ``fake`` (the in-memory :class:`FakeEngine`) and ``engine`` (the
window's Qt handle over it), for the controllers' tests; a module that drives the real engine
defines its own ``engine`` (tests/ui/test_controllers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import shiboken6
from pytestqt.qtbot import QtBot

from mixdesk.ui.threads import EngineController
from tests.helpers.fake_engine import FakeEngine


@pytest.fixture
def fake() -> FakeEngine:
    """An engine in memory that streams a given text."""
    return FakeEngine()


@pytest.fixture
def engine(qtbot: QtBot, fake: FakeEngine) -> Iterator[EngineController]:
    """The engine's Qt handle over the fake; the controllers under test are its children."""
    controller = EngineController(fake)
    yield controller
    controller.shutdown()
    shiboken6.delete(controller)
