"""Measuring: generation speed with a few settings that really vary between machines (experts
in RAM or whole layers, op offload, flash attention, threads), one load after another in the
one engine (each load ends the previous engine process first, so two copies of the model are
never in memory)."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from mixdesk.core.loading.measure import MeasureVariant
from mixdesk.core.loading.service import LoadRequest
from mixdesk.ui.threads import EngineController


class MeasureController(QObject):
    """Runs a measuring in the engine's runner thread and collects what it measured.

    The last load stays: when measuring ends the model is loaded with the last variant (the
    engine runner reports it as a normal load).

    Signals:
        started(): measuring began (the loaded model is being replaced).
        measured(object): (setting, eval tok/s) pairs measured so far, in order.
        finished(): measuring ended, finished or failed (the failure comes as a load failure).
    """

    started = Signal()
    measured = Signal(object)
    finished = Signal()

    def __init__(self, engine: EngineController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.running = False
        self.results: list[tuple[str, float]] = []
        self.variants: list[MeasureVariant] = []
        engine.runner.measured.connect(self._measured)
        engine.runner.measureDone.connect(self._done)

    def start(self, request: LoadRequest, variants: list[MeasureVariant]) -> bool:
        """Measure ``request``'s model with each of ``variants``.

        Returns:
            False when a measuring is already running (nothing new starts).
        """
        if self.running:
            return False
        self.running = True
        self.results = []
        self.variants = list(variants)
        self.started.emit()
        self.engine.measure(request, self.variants)
        return True

    def fastest(self) -> MeasureVariant | None:
        """The variant measured fastest so far, if any."""
        if not self.results:
            return None
        best = max(range(len(self.results)), key=lambda i: self.results[i][1])
        return self.variants[best]

    def _measured(self, results: list[tuple[str, float]]) -> None:
        self.results = list(results)
        self.measured.emit(self.results)

    def _done(self) -> None:
        self.running = False
        self.finished.emit()
