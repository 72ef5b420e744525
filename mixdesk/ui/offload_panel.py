"""The offload panel: a layer slider with live per-device memory bars, context and KV type, Apply, Measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.measure import MeasureReport, measure_variants
from mixdesk.core.loading.model import ResolvedModel
from mixdesk.core.loading.service import LoadRequest, make_plan
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.types import EXPERTS_ORDERS, STRATEGIES, Fit, OffloadPlan
from mixdesk.core.planning.words import explain, speed_short
from mixdesk.ui.plain import ask_yes_no, plain
from mixdesk.ui.widgets import DeviceBars, compact

#: The flash-attention box's tooltip, and while a quantised KV cache turns it on.
FLASH_WORDS = "llama.cpp's flash attention: less memory for long contexts"
FLASH_FORCED_WORDS = (
    "A quantised KV cache (q8_0, q4_0) needs flash attention, so it is on; choose f16 to turn "
    "it off"
)


class MeasureChart(QWidget):
    """Measured tokens/s per setting (the median of its rounds, and their spread), as small
    horizontal bars; the winner, if one beat the current setting beyond the noise, in blue."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.results: list[tuple[str, float, float]] = []
        self.winner = ""
        self.setMinimumHeight(0)

    def set_report(self, report: MeasureReport) -> None:
        """Show ``report``: (label, median, spread) per variant that ran."""
        self.results = [(r.variant.label, r.median, r.spread) for r in report.results if r.rounds]
        best = report.winner()
        self.winner = best.variant.label if best is not None else ""
        self.setMinimumHeight(18 * len(self.results) + 4)
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802
        from PySide6.QtGui import QColor, QPainter

        if not self.results:
            return
        p = QPainter(self)
        top = max(v for _, v, _ in self.results) or 1.0
        for i, (label, value, spread) in enumerate(self.results):
            y = 2 + i * 18
            p.setPen(QColor("#333"))
            p.drawText(4, y + 12, label)
            w = (self.width() - 230) * value / top
            color = "#2b7de9" if label == self.winner else "#9ab"
            p.fillRect(130, y + 2, int(w), 12, QColor(color))
            p.drawText(134 + int(w), y + 12, f"{value:.1f} ± {spread / 2:.1f} tok/s")
        p.end()


class OffloadPanel(QWidget):
    """Tune how a model is loaded; every change re-plans and redraws the bars at once.

    Signals:
        applyRequested(object): the :class:`LoadChoices` to load with.
        measureRequested(list): the :class:`MeasureVariant` list to measure.
        keepFastestRequested(): load with the fastest setting measured.
    """

    applyRequested = Signal(object)
    measureRequested = Signal(list)
    keepFastestRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.profile: ModelProfile | None = None
        self.hardware: HardwareInfo | None = None
        #: What this machine measured (:meth:`set_calibration`).
        self.calibration = Calibration()
        #: Asks the user a yes/no question (a setting that cannot fit, before Apply).
        self.confirm: Callable[[str], bool] = self._ask
        #: The model planned for (resolved and checked when it was chosen).
        self.model: ResolvedModel | None = None
        self.plan: OffloadPlan | None = None
        self.auto_plan: OffloadPlan | None = None
        self._defaults = LoadChoices()

        self.title = plain(QLabel("No model selected"))  # the model's name comes from its file
        self.title.setWordWrap(True)
        self.auto = QCheckBox("Auto (the planner's choice)")
        self.auto.setChecked(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider_label = QLabel("n_gpu_layers 0")
        self.slider_label.setWordWrap(True)  # the placement words must not widen the window
        self.ctx = QSpinBox()
        self.ctx.setRange(0, 1 << 20)
        self.ctx.setSingleStep(1024)
        self.ctx.setSpecialValueText("auto")
        self.kv = QComboBox()
        self.kv.addItems(["f16", "q8_0", "q4_0"])
        self.flash = QCheckBox("Flash attention")
        self.flash.setToolTip(FLASH_WORDS)
        self._flash_wanted = False
        self.threads, self.op_offload, self.verdict = _tuning_controls()
        self.strategy = compact(QComboBox())
        self.strategy.addItem("Whole layers on the GPU", "layers")
        self.strategy.addItem("All layers on the GPU, some experts in RAM", "experts")
        self.strategy.setToolTip(
            "Experts in RAM keeps attention, router, KV cache and output on the GPU and as "
            "few expert tensors in RAM as fit (llama.cpp's --n-cpu-moe, tensor by tensor): "
            "faster prompts, about the same generation speed for Mixtral."
        )
        self.experts_from = _experts_from_control()
        self.bars = DeviceBars()
        self.warning = plain(QLabel(""))
        self.warning.setStyleSheet("color:#c0392b")
        self.warning.setWordWrap(True)
        self.explanation = plain(QLabel(""))
        self.explanation.setWordWrap(True)
        self.apply = QPushButton("Apply (reload)")
        self.measure = QPushButton("Measure")
        self.keep_fastest = QPushButton("Keep fastest")
        self.keep_fastest.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.hide()
        self.chart = MeasureChart()
        self.report = MeasureReport()
        self._lay_out()
        self._connect()
        self._set_enabled(False)

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("Context", self.ctx)
        form.addRow("KV cache", self.kv)
        form.addRow("Placement", self.strategy)
        form.addRow("Experts in RAM", self.experts_from)
        form.addRow("", self.flash)
        form.addRow("CPU threads", self.threads)
        form.addRow("Op offload", self.op_offload)
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply)
        buttons.addWidget(self.measure)
        buttons.addWidget(self.keep_fastest)
        layout = QVBoxLayout(self)
        for w in (self.title, self.auto, self.slider_label, self.slider):
            layout.addWidget(w)
        layout.addLayout(form)
        layout.addWidget(self.bars)
        layout.addWidget(self.warning)
        layout.addWidget(self.explanation)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.chart)
        layout.addWidget(self.verdict)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.slider.valueChanged.connect(self._slider_moved)
        self.auto.toggled.connect(self._replan)
        self.ctx.valueChanged.connect(self._replan)
        self.kv.currentTextChanged.connect(lambda _t: self._flash_follows_kv())
        self.kv.currentTextChanged.connect(self._replan)
        self.flash.toggled.connect(self._replan)
        self.strategy.currentIndexChanged.connect(self._replan)
        self.experts_from.currentIndexChanged.connect(self._replan)
        self.threads.valueChanged.connect(self._replan)
        self.op_offload.currentIndexChanged.connect(self._replan)
        self.apply.clicked.connect(self._apply)
        self.measure.clicked.connect(self._measure)
        self.keep_fastest.clicked.connect(self._keep_fastest)

    def _set_enabled(self, enabled: bool) -> None:
        for w in (
            self.auto,
            self.slider,
            self.ctx,
            self.kv,
            self.flash,
            self.strategy,
            self.experts_from,
            self.threads,
            self.op_offload,
            self.apply,
            self.measure,
        ):
            w.setEnabled(enabled)

    @property
    def model_path(self) -> str:
        """The file of the model planned for ("" before one is chosen)."""
        return str(self.model.path) if self.model is not None else ""

    def set_model(
        self, model: ResolvedModel, profile: ModelProfile, hardware: HardwareInfo
    ) -> None:
        """Plan for a newly selected model."""
        self.model = model
        self.profile = profile
        self.hardware = hardware
        self.title.setText(
            f"{profile.name}: {profile.n_layers} layers"
            + (f", {profile.n_expert} experts" if profile.is_moe else "")
        )
        self.slider.blockSignals(True)
        self.slider.setMaximum(profile.n_layers + 1)
        self.slider.blockSignals(False)
        self._set_enabled(True)
        self.strategy.setEnabled(profile.is_moe)
        self.experts_from.setEnabled(profile.is_moe)
        if not profile.is_moe:
            self.strategy.setCurrentIndex(0)
        self._replan()

    def _slider_moved(self, value: int) -> None:
        if (
            self.auto.isChecked()
            and self.auto_plan is not None
            and value != self.auto_plan.n_gpu_layers
        ):
            self.auto.blockSignals(True)
            self.auto.setChecked(False)
            self.auto.blockSignals(False)
        self._replan()

    def _replan(self) -> None:
        if self.profile is None or self.hardware is None:
            return
        profile, hardware = self.profile, self.hardware

        def plan_for(layers: int | None) -> OffloadPlan:
            return make_plan(profile, hardware, self._choices(layers), calibration=self.calibration)

        self.auto_plan = plan_for(None)
        if self.auto.isChecked():
            self.plan = self.auto_plan
            self.slider.blockSignals(True)
            self.slider.setValue(self.plan.n_gpu_layers)
            self.slider.blockSignals(False)
        else:
            self.plan = plan_for(self.slider.value())
        plan = self.plan
        # what people read first: the layers on the GPU; llama.cpp's own number below it
        self.slider_label.setText(
            f"{plan.placement_words}, context {plan.n_ctx}, {speed_short(plan.speed)}\n"
            f"llama.cpp: n_gpu_layers {plan.n_gpu_layers}"
        )
        self.bars.set_devices(plan.devices)
        self.warning.setText(not_fitting_words(plan))
        self.explanation.setText("\n".join(explain(plan)))

    def choices(self) -> LoadChoices:
        """The panel's settings as load choices: the slider's layer count (none with Auto on),
        context, KV type, flash attention; threads, batch and mmap from :meth:`set_defaults`."""
        return self._choices(None if self.auto.isChecked() else self.slider.value())

    def request(self, choices: LoadChoices | None = None) -> LoadRequest:
        """What to load: the panel's model (with the profile already read) and ``choices``
        (the panel's own by default). Only once a model is set (:attr:`plan` is not None)."""
        assert self.hardware is not None
        assert self.model is not None
        return LoadRequest(
            self.model,
            self.hardware,
            choices or self.choices(),
            profile=self.profile,
            calibration=self.calibration,
        )

    def set_calibration(self, calibration: Calibration) -> None:
        """Plan with what this machine has measured (the speeds say "measured" once they are)."""
        self.calibration = calibration
        self._replan()

    def _choices(self, n_gpu_layers: int | None) -> LoadChoices:
        return replace(
            self._defaults,
            n_gpu_layers=n_gpu_layers,
            n_ctx=self.ctx.value() or None,
            kv_type=self.kv.currentText(),
            flash_attn=self.flash.isChecked(),
            strategy=next((s for s in STRATEGIES if s == self.strategy.currentData()), "layers"),
            experts_from=next(
                (o for o in EXPERTS_ORDERS if o == self.experts_from.currentData()), None
            ),
            n_threads=self.threads.value() or None,
            op_offload=_tri_state(self.op_offload.currentData()),
        )

    def set_defaults(self, choices: LoadChoices) -> None:
        """Start from these choices (the saved settings): context, KV type, flash attention, threads."""
        self._defaults = choices
        self._show_choices(choices)
        self._replan()

    def _show_choices(self, choices: LoadChoices) -> None:
        """Put ``choices`` into the controls (without re-planning at each one)."""
        controls = (
            self.ctx,
            self.kv,
            self.flash,
            self.threads,
            self.op_offload,
            self.strategy,
            self.experts_from,
            self.auto,
            self.slider,
        )
        for w in controls:
            w.blockSignals(True)
        self.ctx.setValue(choices.n_ctx or 0)
        self.kv.setCurrentText(choices.kv_type)
        self.flash.setChecked(choices.flash_attn)
        self._flash_follows_kv()
        self.threads.setValue(choices.n_threads or 0)
        self.op_offload.setCurrentIndex(max(0, self.op_offload.findData(choices.op_offload)))
        self.strategy.setCurrentIndex(max(0, self.strategy.findData(choices.strategy)))
        self.experts_from.setCurrentIndex(max(0, self.experts_from.findData(choices.experts_from)))
        if choices.n_gpu_layers is not None and choices.strategy == "layers":
            self.auto.setChecked(False)
            self.slider.setValue(choices.n_gpu_layers)
        for w in controls:
            w.blockSignals(False)

    def _flash_follows_kv(self) -> None:
        """A quantised KV cache needs flash attention (the engine turns it on): the box shows
        it on and cannot be turned off; back on f16 it shows the user's own choice again."""
        quantised = self.kv.currentText() != "f16"
        if quantised and self.flash.isEnabled():
            self._flash_wanted = self.flash.isChecked()
        elif not quantised and not self.flash.isEnabled():
            self.flash.setChecked(self._flash_wanted)
        if quantised:
            self.flash.setChecked(True)
        self.flash.setEnabled(not quantised)
        self.flash.setToolTip(FLASH_FORCED_WORDS if quantised else FLASH_WORDS)

    def _apply(self) -> None:
        if self.plan is None:
            return
        warning = not_fitting_words(self.plan)
        if warning and not self.confirm(f"{warning} Load it anyway?"):
            return
        self.applyRequested.emit(self.choices())

    def _ask(self, question: str) -> bool:
        return ask_yes_no(self, "This setting does not fit", question)

    def _measure(self) -> None:
        if self.plan is None or self.profile is None or self.hardware is None:
            return
        self.measureRequested.emit(
            measure_variants(self.choices(), self.plan, self.profile, self.hardware)
        )

    def show_measurements(self, report: MeasureReport) -> None:
        """Draw measured tok/s per setting, and say which won (or that none did)."""
        self.report = report
        self.chart.set_report(report)
        best = report.winner()
        self.keep_fastest.setEnabled(best is not None)
        if not report.finished:
            self.verdict.setText(f"Measuring: round {report.rounds_done + 1} of {report.rounds}…")
        elif best is None:
            self.verdict.setText(
                "No difference beyond noise: the current setting is as fast as any measured."
            )
        else:
            gain = best.median / max(report.results[0].median, 1e-9)
            self.verdict.setText(
                f"Fastest: {best.variant.label}, {best.median:.1f} tok/s "
                f"({gain:.2f}x the current setting, beyond the noise of {report.rounds} rounds)."
            )

    def keep(self, choices: LoadChoices) -> None:
        """Take ``choices`` (the fastest measured) into the panel, every one of them visible,
        and load with what the panel then holds: the panel and the engine cannot disagree."""
        self._defaults = replace(self._defaults, n_batch=choices.n_batch, use_mmap=choices.use_mmap)
        self._show_choices(choices)
        self._replan()
        self.applyRequested.emit(self.choices())

    def _keep_fastest(self) -> None:
        self.keepFastestRequested.emit()

    def show_progress(self, fraction: float | None) -> None:
        """The load progress bar (None hides it)."""
        if fraction is None:
            self.progress.hide()
            return
        self.progress.show()
        self.progress.setValue(int(fraction * 100))


def _tri_state(data: object) -> bool | None:
    """A combo box's Auto / On / Off data as a choice."""
    return data if isinstance(data, bool) else None


def _tuning_controls() -> tuple[QSpinBox, QComboBox, QLabel]:
    """The thread count, op offload (Auto / On / Off) and Measure's verdict: every setting
    Keep fastest can change has a control the user sees."""
    threads = QSpinBox()
    threads.setRange(0, 256)
    threads.setSpecialValueText("auto (physical cores)")
    op_offload = compact(QComboBox())
    op_offload.addItem("Auto (the planner's choice)", None)
    op_offload.addItem("On", True)
    op_offload.addItem("Off", False)
    op_offload.setToolTip(
        "llama.cpp's op offload: copy the weights kept in RAM to the GPU for long prompts "
        "(faster prompts with experts in RAM; with partial layer offload it costs VRAM)."
    )
    verdict = plain(QLabel(""))
    verdict.setWordWrap(True)
    return threads, op_offload, verdict


def not_fitting_words(plan: OffloadPlan) -> str:
    """What a setting that cannot fit will do, in one sentence ("" when it fits)."""
    if plan.fit is not Fit.NONE:
        return ""
    return (
        f"This setting does not fit: {format_bytes(plan.shortfall_bytes)} more memory is "
        "needed than is free, so loading it will fail."
    )


def _experts_from_control() -> QComboBox:
    """Whose experts stay in RAM with the experts strategy: the speed model's choice, the
    first layers' or the last layers' (a choice Measure compares and Keep fastest keeps)."""
    box = compact(QComboBox())
    box.addItem("Auto (the faster, by the speed model)", None)
    box.addItem("First layers' experts", "first")
    box.addItem("Last layers' experts", "last")
    box.setToolTip(
        "Which layers' expert tensors go to RAM with 'some experts in RAM': the last layers' "
        "read long prompts faster on a GPU (op offload copies fewer of them per batch)."
    )
    return box
