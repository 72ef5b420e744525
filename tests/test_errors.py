"""The one table that turns exceptions into sentences."""

from __future__ import annotations

import errno

from mixdesk.errors import ModelNotFoundError, user_message


def test_mixdesk_errors_are_their_own_sentence() -> None:
    assert user_message(ModelNotFoundError("/x.gguf")).startswith("Model file not found: /x.gguf.")


def test_os_errors() -> None:
    assert "disk is full" in user_message(OSError(errno.ENOSPC, "No space left", "/models/a.gguf"))
    assert "Permission denied: /root/x" in user_message(
        PermissionError(errno.EACCES, "denied", "/root/x")
    )
    assert "No such file" in user_message(FileNotFoundError(errno.ENOENT, "missing", "/nope"))


def test_unexpected_errors_still_get_a_sentence() -> None:
    message = user_message(ZeroDivisionError("division by zero"))
    assert "Something unexpected went wrong" in message
    assert "\n" not in message
