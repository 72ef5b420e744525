"""Settings: sampling defaults, system prompt, threads, models folder, the Hub token and the
conversations' saved KV states; and the sampling preset of one conversation."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from mixdesk.core.chat.context_window import OVERFLOW_POLICIES
from mixdesk.core.engine import SamplingParams
from mixdesk.core.hub.library import models_dir
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.kv_cache_settings import KvCacheSection
from mixdesk.ui.plain import plain


def _spin(value: float, low: float, high: float, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    return box


class SamplingFields:
    """The sampling widgets (temperature … seed), shared by both dialogs."""

    def __init__(self, form: QFormLayout, values: SamplingParams) -> None:
        self._initial = values
        self.temperature = _spin(values.temperature, 0, 5, 0.05)
        self.top_p = _spin(values.top_p, 0.01, 1, 0.05)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setValue(values.top_k)
        self.min_p = _spin(values.min_p, 0, 1, 0.01)
        self.repeat_penalty = _spin(values.repeat_penalty, 0.5, 3, 0.05)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(0, 1 << 20)
        self.max_tokens.setValue(values.max_tokens)
        self.seed = QLineEdit("" if values.seed is None else str(values.seed))
        for label, widget in (
            ("Temperature", self.temperature),
            ("Top-p", self.top_p),
            ("Top-k", self.top_k),
            ("Min-p", self.min_p),
            ("Repeat penalty", self.repeat_penalty),
            ("Max tokens (0 = until full)", self.max_tokens),
            ("Seed (empty = random)", self.seed),
        ):
            form.addRow(label, widget)

    def values(self) -> SamplingParams:
        """The edited values (stop strings, which have no field here, are kept)."""
        seed = self.seed.text().strip()
        return replace(
            self._initial,
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            min_p=self.min_p.value(),
            repeat_penalty=self.repeat_penalty.value(),
            max_tokens=self.max_tokens.value(),
            seed=int(seed) if seed.isdigit() else None,
        )


def _models_folder(settings: Settings, parent: QWidget) -> tuple[QLineEdit, QWidget]:
    """The Models folder field (empty: the default, shown in it) and a Browse button."""
    edit = QLineEdit(settings.models_dir or "")
    default = models_dir(replace(settings, models_dir=None))
    edit.setPlaceholderText(f"{default} (the default)")
    edit.setToolTip(f"Where downloaded models go; empty: {default}")
    browse = QPushButton("Browse…")
    browse.setToolTip("Choose the folder")

    def choose() -> None:
        start = edit.text().strip() or str(default)
        chosen = QFileDialog.getExistingDirectory(parent, "Models folder", start)
        if chosen:
            edit.setText(chosen)

    browse.clicked.connect(choose)
    row = QWidget()
    line = QHBoxLayout(row)
    line.setContentsMargins(0, 0, 0, 0)
    line.addWidget(edit, 1)
    line.addWidget(browse)
    return edit, row


def _buttons(dialog: QDialog, form: QFormLayout) -> None:
    buttons = QDialogButtonBox(
        QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
    )
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    form.addRow(buttons)


class SettingsDialog(QDialog):
    """Edit :class:`Settings`. The Hub token goes to huggingface_hub's own storage, never to settings."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout(self)
        self.sampling = SamplingFields(form, settings.sampling())
        self.system_prompt = QLineEdit(settings.system_prompt)
        self.threads = QSpinBox()
        self.threads.setRange(0, 512)
        self.threads.setSpecialValueText("physical cores")
        self.threads.setValue(settings.threads or 0)
        self.models_dir, models_row = _models_folder(settings, self)
        self.overflow = QComboBox()
        self.overflow.addItem("Drop the oldest turns (keep the system prompt)", "drop_oldest")
        self.overflow.addItem("Stop at the limit", "stop")
        self.overflow.setCurrentIndex(max(0, self.overflow.findData(settings.context_overflow)))
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("hf_… (stored by huggingface_hub, not in MixDesk's settings)")
        self.token_state = plain(QLabel(self._token_state()))
        save_token = QPushButton("Save token")
        save_token.clicked.connect(self._save_token)
        for label, widget in (
            ("System prompt", self.system_prompt),
            ("Threads", self.threads),
            ("Models folder", models_row),
            ("Long conversations", self.overflow),
            ("Hugging Face token", self.token),
            ("", save_token),
            ("", self.token_state),
        ):
            form.addRow(label, widget)
        for widget, tip in (
            (self.system_prompt, "The system prompt of new conversations (each can have its own)"),
            (self.threads, "CPU threads llama.cpp uses; 0: one per physical core"),
            (self.overflow, "What happens when a conversation outgrows the context"),
        ):
            widget.setToolTip(tip)
        self.kv_cache = KvCacheSection(form, settings)
        _buttons(self, form)

    @staticmethod
    def _token_state() -> str:
        from huggingface_hub import get_token

        return (
            "A token is set."
            if get_token()
            else "No token: gated models (accept their licence first) need one."
        )

    def _save_token(self) -> None:
        from huggingface_hub import login

        token = self.token.text().strip()
        if token:
            try:
                login(token=token, add_to_git_credential=False)
            except Exception as err:  # noqa: BLE001 - shown to the user as a sentence
                self.token_state.setText(f"The token was not accepted ({type(err).__name__}).")
                return
            self.token.clear()
            self.token_state.setText(self._token_state())

    def result_settings(self) -> Settings:
        """The edited settings."""
        kv_cache_gib, kv_memory_gib = self.kv_cache.budgets()
        return replace(
            self.settings.with_sampling(self.sampling.values()),
            system_prompt=self.system_prompt.text(),
            threads=self.threads.value() or None,
            models_dir=self.models_dir.text().strip() or None,
            context_overflow=next(
                (p for p in OVERFLOW_POLICIES if p == self.overflow.currentData()), "drop_oldest"
            ),
            kv_cache_gib=kv_cache_gib,
            kv_memory_gib=kv_memory_gib,
        )


class SamplingDialog(QDialog):
    """Sampling settings of one conversation (its preset; the defaults come from Settings)."""

    def __init__(self, values: SamplingParams, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sampling for this conversation")
        form = QFormLayout(self)
        self.fields = SamplingFields(form, values)
        _buttons(self, form)

    def values(self) -> SamplingParams:
        """The edited values."""
        return self.fields.values()
