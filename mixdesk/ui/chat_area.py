"""The window's middle column: the model row above, and below it the chat, or the welcome
page while there is nothing to chat with and the library is empty (issue 13)."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QStackedWidget, QVBoxLayout, QWidget

from mixdesk.core.hub.catalog import CatalogModel
from mixdesk.core.loading.model import ResolvedModel
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.answer import AnswerController
from mixdesk.ui.chat_pane import ChatPane
from mixdesk.ui.models import ModelBar, ModelController
from mixdesk.ui.welcome import FirstRun, WelcomePage


class ChatArea(QWidget):
    """The model row, and the chat pane or the welcome page.

    Signals:
        downloaded(str): the welcome page's download is in the library (its path).
        loadWanted(int): the downloaded model's profile is read: load it with this
            ``n_gpu_layers`` (the plan made before the download).
    """

    downloaded = Signal(str)
    loadWanted = Signal(int)

    def __init__(
        self,
        models: ModelController,
        answers: AnswerController,
        settings: Settings,
        *,
        catalog: Sequence[CatalogModel] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.models = models
        self.model_bar = ModelBar(models)
        self.chat = ChatPane(answers, settings)
        self.welcome = WelcomePage()
        self.first_run = FirstRun(
            self.welcome,
            settings,
            run=models.run,
            library=lambda: models.library,
            catalog=catalog,
            parent=self,
        )
        self.stack = QStackedWidget()
        self.stack.addWidget(self.chat)
        self.stack.addWidget(self.welcome)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_bar)
        layout.addWidget(self.stack, 1)
        self._pending: tuple[str, int] | None = None
        self.welcome.openFileRequested.connect(self.model_bar.open_button.click)
        self.welcome.connectRequested.connect(self.model_bar.endpoint_button.click)
        self.first_run.downloaded.connect(self._downloaded)
        models.sourceChanged.connect(self.update_page)
        models.loaded.connect(lambda _outcome: self.show_chat())

    @property
    def welcoming(self) -> bool:
        """Whether the welcome page is showing."""
        return self.stack.currentWidget() is self.welcome

    def update_page(self) -> None:
        """The welcome page while nothing answers, nothing is chosen and the library is empty."""
        models = self.models
        idle = models.info is None and models.endpoint is None
        first = idle and not self.model_bar.picker.currentData() and not models.library.entries()
        self.stack.setCurrentWidget(self.welcome if first else self.chat)

    def show_chat(self) -> None:
        """Show the chat, with the message box focused (a model has loaded)."""
        self.stack.setCurrentWidget(self.chat)
        self.chat.input.setFocus()

    def _downloaded(self, path: str, n_gpu_layers: int) -> None:
        self._pending = (path, n_gpu_layers)  # loaded once its profile is read
        self.downloaded.emit(path)

    def profile_ready(self, model: ResolvedModel, _profile: object) -> None:
        """A chosen file's profile is read (connected after the offload panel has planned it)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == str(model.path):
            self.loadWanted.emit(pending[1])
