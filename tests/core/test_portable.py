"""Portable where the users are: the package type-checks for Windows and macOS, and the
conversion's copy works without Linux's ``copy_file_range`` (it used to fall back to
``os.pread``, which Windows lacks: converting a TheBloke file would have crashed there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.gguf import convert

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_the_package_type_checks_for_other_platforms(platform: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--platform", platform, "mixdesk"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_buffered_copy_moves_bytes_between_positions(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(bytes(range(256)) * 64)
    dst.write_bytes(b"\0" * 100)
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_RDWR)
    try:
        assert convert._copy_chunk_buffered(fin, fout, 1000, 300, 50) == 1000
        assert convert._copy_chunk(fin, fout, 10, 16384 - 10, 1050) == 10
        assert convert._copy_chunk(fin, fout, 10, 16384, 1060) == 0  # past the end
    finally:
        os.close(fin)
        os.close(fout)
    data = dst.read_bytes()
    assert data[:50] == b"\0" * 50
    assert data[50:1050] == (bytes(range(256)) * 64)[300:1300]
    assert data[1050:1060] == (bytes(range(256)) * 64)[-10:]
