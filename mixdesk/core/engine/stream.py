"""An answer being generated, locally (the engine) or remotely (an endpoint): text deltas, then the result."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mixdesk.core.engine.protocol import (
    ChatDone,
    TextDelta,
)
from mixdesk.errors import (
    MixdeskError,
)


class AnswerStream(Iterator[TextDelta]):
    """An answer being generated, locally or remotely: iterate for text deltas, then read
    :attr:`result`. Subclasses append each delta's text to ``_text`` and implement
    ``__next__`` and :meth:`cancel`.

    Iteration can be interrupted (e.g. KeyboardInterrupt) and resumed: call :meth:`cancel`
    and keep iterating to receive the end of the answer.
    """

    def __init__(self) -> None:
        self.result: ChatDone | None = None
        self._text: list[str] = []

    def __iter__(self) -> AnswerStream:
        return self

    @property
    def text(self) -> str:
        """The answer received so far."""
        return "".join(self._text)

    def cancel(self) -> None:
        """Ask for the answer to stop; it ends with finish_reason "cancelled"."""
        raise NotImplementedError

    def wait(self) -> ChatDone:
        """Consume the rest of the answer and return its end."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Stop the answer if it is still running and consume its end."""
        if self.result is None:
            self.cancel()
            with contextlib.suppress(MixdeskError):
                self.wait()
