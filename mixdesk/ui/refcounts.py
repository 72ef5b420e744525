"""A workaround for PySide6 wheels that release ``None`` and ``True`` once per call.

PySide6 6.12.0's wheels are built for the limited C API of Python 3.10 (``abi3``) with
headers whose ``Py_RETURN_NONE`` and ``Py_RETURN_TRUE`` return the object without a new
reference, as if it were immortal (CPython issue gh-134989, fixed in its headers in June
2025: https://github.com/python/cpython/issues/134989). From Python 3.12 on ``None`` and
``True`` are immortal and nothing happens; on 3.10 and 3.11 every call of a method that
returns nothing (``setHtml``, ``setValue``, ``QPropertyAnimation.stop`` ... all of them)
takes one reference from ``None``, and every ``Signal.emit`` one from ``True``. When the
count reaches zero the interpreter aborts ("Fatal Python error: none_dealloc"), mid-run
after some ten thousand calls or at exit.

No choice of Qt calls avoids it (every void method does it), so :func:`keep_alive` does
what Python 3.12 does: it gives ``None``, ``True`` and ``False`` so many references that no
run can use them up. It does so only where the fault is seen: it calls a void method and an
``emit`` a few times and looks at the reference counts, so a fixed PySide6 or a newer Python
is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

from PySide6.QtCore import QObject

log = logging.getLogger(__name__)

#: References added to each singleton: 2**40 calls is a million calls a second for 12 days.
PIN = 1 << 40
_PROBES = 8


def released_per_call() -> tuple[int, int]:
    """How many references one void call takes from ``None``, and one ``emit`` from ``True``
    (0 and 0 where PySide6 counts them right).

    The probe makes a few calls, so a faulty build loses a few more references here.
    """
    probe = QObject()
    none_before = sys.getrefcount(None)
    for _ in range(_PROBES):
        probe.setObjectName("")
    none_taken = none_before - sys.getrefcount(None)
    true_before = sys.getrefcount(True)
    for _ in range(_PROBES):
        probe.objectNameChanged.emit("")
    true_taken = true_before - sys.getrefcount(True)
    return none_taken // _PROBES, true_taken // _PROBES


def _can_pin() -> bool:
    """Whether a reference count is the first word of an object (CPython, release build,
    before 3.12; 3.12 made these objects immortal and changed how the word is read)."""
    return (
        platform.python_implementation() == "CPython"
        and sys.version_info < (3, 12)
        and not hasattr(sys, "gettotalrefcount")  # a debug build may lay objects out otherwise
    )


def keep_alive() -> bool:
    """Give ``None``, ``True`` and ``False`` :data:`PIN` more references where PySide6
    releases them (see the module's docstring); True when it did. Once per process."""
    global _pinned  # noqa: PLW0603 - one process-wide fact
    if _pinned or not _can_pin():
        return False
    none_taken, true_taken = released_per_call()
    if none_taken <= 0 and true_taken <= 0:
        return False
    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += PIN
    _pinned = True
    log.info(
        "PySide6 releases None (%d) and True (%d) per call (CPython gh-134989): kept alive",
        none_taken,
        true_taken,
    )
    return True


_pinned = False
