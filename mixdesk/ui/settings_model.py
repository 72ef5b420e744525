"""The window's settings as a QObject: one :class:`Settings`, and a signal when they change.

The settings are read once, where the app starts (:func:`mixdesk.ui.app.run_app`), and every
part of the window holds the same object. What follows a setting (the library follows the
models folder, the offload panel the load defaults) connects to :attr:`SettingsModel.changed`
instead of reading the file again.
"""

from __future__ import annotations

from dataclasses import fields

from PySide6.QtCore import QObject, Signal

from mixdesk.core.workspace.settings import Settings


class SettingsModel(QObject):
    """The app's one :class:`Settings`, and what changed in it.

    Args:
        settings: the settings, as read at start-up; edited in place, so every holder of the
            object sees the new values.

    Signals:
        changed(object): the names of the settings an :meth:`apply` changed (a frozenset of
            :class:`Settings` field names), after they are saved.
    """

    changed = Signal(object)

    def __init__(self, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings

    def apply(self, new: Settings) -> frozenset[str]:
        """Take ``new`` values into the one settings object, save them, and say which changed.

        Returns:
            The names of the settings that changed (empty: nothing to save, no signal).
        """
        changed = frozenset(
            f.name
            for f in fields(Settings)
            if getattr(new, f.name) != getattr(self.settings, f.name)
        )
        if not changed:
            return changed
        for name in changed:
            setattr(self.settings, name, getattr(new, name))
        self.settings.save()
        self.changed.emit(changed)
        return changed
