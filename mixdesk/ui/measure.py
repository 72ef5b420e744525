"""Measuring: generation speed at a few GPU layer counts, one load after another in the one
engine (each load ends the previous engine process first, so two copies of the model are
never in memory)."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from mixdesk.core.loading import LoadRequest
from mixdesk.ui.workers import EngineController


class MeasureController(QObject):
    """Runs a measuring in the engine's worker thread and collects what it measured.

    The last load stays: when measuring ends the model is loaded with the last layer count
    (the engine worker reports it as a normal load).

    Signals:
        started(): measuring began (the loaded model is being replaced).
        measured(object): (GPU layers, eval tok/s) pairs measured so far, in order.
        finished(): measuring ended, finished or failed (the failure comes as a load failure).
    """

    started = Signal()
    measured = Signal(object)
    finished = Signal()

    def __init__(self, engine: EngineController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.running = False
        self.results: list[tuple[int, float]] = []
        engine.worker.measured.connect(self._measured)
        engine.worker.measureDone.connect(self._done)

    def start(self, request: LoadRequest, layer_counts: list[int]) -> bool:
        """Measure ``request``'s model at each of ``layer_counts`` GPU layers.

        Returns:
            False when a measuring is already running (nothing new starts).
        """
        if self.running:
            return False
        self.running = True
        self.results = []
        self.started.emit()
        self.engine.measure(request, layer_counts)
        return True

    def fastest(self) -> int | None:
        """The layer count measured fastest so far, if any."""
        return max(self.results, key=lambda r: r[1])[0] if self.results else None

    def _measured(self, results: list[tuple[int, float]]) -> None:
        self.results = list(results)
        self.measured.emit(self.results)

    def _done(self) -> None:
        self.running = False
        self.finished.emit()
