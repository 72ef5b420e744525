"""Measuring: generation speed with a few settings that really vary between machines (layer
counts around the plan, experts in RAM or whole layers, op offload, flash attention, threads),
each in interleaved rounds in the one engine (each load ends the previous engine process first,
so two copies of the model are never in memory); see :mod:`mixdesk.core.loading.measure`."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from mixdesk.core.loading.measure import MeasureReport, MeasureVariant
from mixdesk.core.loading.service import LoadRequest
from mixdesk.ui.threads import EngineController


class MeasureController(QObject):
    """Runs a measuring in the engine's runner thread and collects what it measured.

    The last load stays: when measuring ends the model is loaded with the last variant (the
    engine runner reports it as a normal load).

    Signals:
        started(): measuring began (the loaded model is being replaced).
        measured(object): the :class:`MeasureReport` so far.
        finished(): measuring ended, finished or failed (the failure comes as a load failure).
    """

    started = Signal()
    measured = Signal(object)
    finished = Signal()

    def __init__(self, engine: EngineController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.running = False
        self.report = MeasureReport()
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
        self.report = MeasureReport()
        self.variants = list(variants)
        self.started.emit()
        self.engine.measure(request, self.variants)
        return True

    def fastest(self) -> MeasureVariant | None:
        """The variant that beat the current setting beyond the noise (None: no difference
        beyond noise, or not finished)."""
        best = self.report.winner()
        return best.variant if best is not None else None

    def _measured(self, report: MeasureReport) -> None:
        self.report = report
        self.measured.emit(report)

    def _done(self) -> None:
        self.running = False
        self.finished.emit()
