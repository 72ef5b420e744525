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


def test_every_engine_error_crosses_the_pipe_as_itself() -> None:
    """Errors cross the engine's pipe by an explicit code (never a class name looked up with
    getattr), and come back as the same class with the same sentence and fields."""
    import mixdesk.errors as e
    from mixdesk.core.engine.protocol import ChatDone, EngineFailure
    from mixdesk.core.engine.wire import failure, from_dict

    samples: list[e.MixdeskError] = [
        e.ModelNotFoundError("/models/x.gguf"),
        e.NotAGgufError("/tmp/notes.txt"),
        e.NotARegularFileError("/tmp/fifo", "a FIFO"),
        e.DeviceOutOfMemoryError(
            "It does not fit.", device="CUDA0", buffer="KV", requested_bytes=123
        ),
        e.HostOutOfMemoryError("No RAM."),
        e.TemplateBudgetError("Too long."),
        e.WorkerLostError("The worker went away.", returncode=-6),
        e.WorkerUnreachableError("Nobody there.", endpoint="127.0.0.1:1"),
        e.WorkerBusyError("Busy.", endpoint="127.0.0.1:2"),
        e.NotAWorkerError("Not one.", endpoint="127.0.0.1:3"),
    ]
    assert len(set(e.WIRE_CODES.values())) == len(e.WIRE_CODES)
    for err in samples:
        wire = failure(err, str(err), 7)
        assert wire.code in e.WIRE_CODES.values()
        again = e.from_wire(wire.code, wire.message, wire.details)
        expected = next(c for c in type(err).__mro__ if c in e.WIRE_CODES)
        assert type(again) is expected
        assert str(again) == str(err)
        for name in ("path", "kind", "device", "buffer", "requested_bytes", "endpoint"):
            if hasattr(err, name) and type(again) is type(err):  # a parent keeps its own fields
                assert getattr(again, name) == getattr(err, name)
    assert type(e.from_wire("from_a_newer_engine", "Hm.", {})) is e.MixdeskError
    # every error the engine process can raise has a code of its own
    raised = {c for c in vars(e).values() if isinstance(c, type) and issubclass(c, e.WorkerError)}
    assert raised <= set(e.WIRE_CODES)
    assert "kind" not in {f for f in EngineFailure.__dataclass_fields__}
    assert (
        from_dict(
            ChatDone, {"request_id": 1, "text": "", "finish_reason": "stop", "stats": {}}
        ).request_id
        == 1
    )
