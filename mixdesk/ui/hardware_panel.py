"""The Hardware tab, and the banner sentence for a GPU that the llama.cpp build leaves unused."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.workers_panel import WorkersPanel


def unused_gpu_notice(hw: HardwareInfo) -> str:
    """What to install when a GPU is present and the llama.cpp build is CPU-only ("" if not)."""
    if not hw.gpus or hw.gpu_offload:
        return ""
    from mixdesk.core.onboarding.doctor import gpu_build_command

    gpu = hw.gpus[0]
    return (
        f"{gpu.name} is not used: this llama.cpp build is CPU-only. Install a GPU build "
        f"with:\n{gpu_build_command(gpu.backend)}"
    )


class HardwarePanel(QLabel):
    """GPUs with free/total memory, RAM, cores, and what the llama.cpp build can do (rich
    text, with the GPU names escaped: they come from the driver)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Detecting hardware…", parent)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignTop)

    def show_hardware(self, hw: HardwareInfo) -> None:
        """Describe ``hw``."""
        gpus = (
            "".join(
                f"<li>{html.escape(g.name)} ({g.backend}): {format_bytes(g.free_bytes)} free of "
                f"{format_bytes(g.total_bytes)}</li>"
                for g in hw.gpus
            )
            or "<li>none found</li>"
        )
        build = "can offload to a GPU" if hw.gpu_offload else "CPU only"
        self.setText(
            f"<b>GPUs</b><ul>{gpus}</ul><b>RAM</b>: {format_bytes(hw.ram_available_bytes)} "
            f"available of {format_bytes(hw.ram_total_bytes)}<br><b>CPU</b>: "
            f"{hw.physical_cores} cores<br><b>llama.cpp build</b>: {build}"
        )


def calibration_words(calibration: Calibration) -> str:
    """What the speeds MixDesk shows are: measured here, or estimates until measured."""
    speed = calibration.speed
    if speed is None:
        return (
            "Speeds are estimates until MixDesk measures this machine (under a minute, each "
            "quantisation type on the CPU and on every worker)."
        )
    devices = f" and {len(speed.devices)} worker(s)" if speed.devices else ""
    return (
        f"Speeds are measured on this machine ({speed.cpu_threads} CPU threads{devices}), "
        f"within about {speed.error:.0%}. Measure again after changing hardware or drivers."
    )


class HardwareTab(QWidget):
    """The Hardware tab: this machine (:class:`HardwarePanel`), its speed calibration, and the
    workers of other machines (:class:`~mixdesk.ui.workers_panel.WorkersPanel`).

    Signals:
        calibrateRequested(): measure this machine's speed.
    """

    calibrateRequested = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.machine = HardwarePanel()
        self.workers = WorkersPanel(settings)
        self.calibration = QLabel(calibration_words(Calibration()))
        self.calibration.setWordWrap(True)
        self.calibrate = QPushButton("Measure speed")
        self.calibrate.setToolTip(
            "Measure this machine (under a minute) so that the speeds shown are measured ones."
        )
        self.calibrate.clicked.connect(self.calibrateRequested)
        row = QHBoxLayout()
        row.addWidget(self.calibration, 1)
        row.addWidget(self.calibrate)
        layout = QVBoxLayout(self)
        layout.addWidget(self.machine)
        layout.addLayout(row)
        layout.addWidget(self.workers, 1)

    def show_calibration(self, calibration: Calibration) -> None:
        """Say what the speeds are."""
        self.calibration.setText(calibration_words(calibration))
        self.calibrate.setEnabled(True)

    def show_calibrating(self, what: str, fraction: float) -> None:
        """Progress of a measuring (the button waits until it ends)."""
        self.calibrate.setEnabled(False)
        self.calibration.setText(f"Measuring this machine: {what} ({fraction * 100:.0f}%)…")
