"""Text from a model file, the network or an exception is shown as plain text, never as HTML.

Qt guesses whether a label's or a message box's text is rich text, and a message box opens
the links in it; a chat template's error message or a model's name could then draw markup
or offer a ``file://`` link. Every label and dialog that shows such text goes through here.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget


def plain(label: QLabel) -> QLabel:
    """Make ``label`` show its text as plain text (and return it)."""
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setOpenExternalLinks(False)
    return label


def message_box(
    parent: QWidget | None,
    text: str,
    *,
    icon: QMessageBox.Icon = QMessageBox.Icon.Warning,
    title: str = "MixDesk",
) -> QMessageBox:
    """A message box showing ``text`` as plain text, with no links to follow; deleted on close."""
    box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    return box


def ask_yes_no(parent: QWidget | None, title: str, question: str) -> bool:
    """Ask ``question`` (plain text: it may name a model file) with Yes and No, No the
    default; True for Yes."""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        title,
        question,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        parent,
    )
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box.exec() == QMessageBox.StandardButton.Yes
