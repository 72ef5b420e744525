"""A model reference is resolved and checked once (ResolvedModel): a path, a library name or
any part of a split model gives the first part, every part, the library name and the size;
what is not a model is refused there, before anything plans or loads it."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pytest

from mixdesk.cli import build_parser
from mixdesk.commands.serve import serve_config
from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.core.gguf.synthetic import TINY, write_model
from mixdesk.core.hub.library import Library, ModelNotInLibraryError
from mixdesk.core.hub.pull import import_model
from mixdesk.core.loading.model import ResolvedModel, resolve_file, resolve_model
from mixdesk.core.loading.service import plan_load
from mixdesk.core.planning.calibration import Calibration
from mixdesk.errors import ModelNotFoundError, NotAGgufError, NotARegularFileError
from tests.helpers.window import CPU


@pytest.fixture
def split(tmp_path: Path) -> list[Path]:
    """A model in three parts."""
    (tmp_path / "split").mkdir()
    first = write_model(tmp_path / "split" / "tiny-split.gguf", TINY, split_parts=3)
    return sorted(first.parent.glob("tiny-split-*-of-00003.gguf"))


def test_any_part_of_a_split_model_resolves_to_all_of_it(split: list[Path], tmp_path: Path) -> None:
    library = Library(tmp_path / "models")
    for part in split:
        model = resolve_model(part, library=library)
        assert model == ResolvedModel(
            path=split[0],
            parts=tuple(split),
            library_name=None,
            size=sum(p.stat().st_size for p in split),
        )
        assert model.name == "tiny-split"  # without -00001-of-00003


def test_a_library_name_resolves_with_its_name(tmp_path: Path, models: dict[str, Path]) -> None:
    """Two models of one file name: the second is NAME-2 in the library, and it is that name
    that the resolved model carries, by name or by path."""
    library = Library(tmp_path / "models")
    other = tmp_path / "other" / models["q2_k"].name
    other.parent.mkdir()
    shutil.copy(models["q4_k_m"], other)
    first = import_model(models["q2_k"], library=library)
    second = import_model(other, library=library)
    assert second.name == f"{first.name}-2"
    by_name = resolve_model(second.name, library=library)
    assert by_name == resolve_model(other, library=library)
    assert (by_name.path, by_name.library_name, by_name.name) == (other, second.name, second.name)
    assert resolve_model(f"{first.name}.gguf", library=library).path == models["q2_k"]
    assert resolve_model(str(models["f32"]), library=library).library_name is None


def test_what_is_not_a_model_is_refused_when_resolved(
    split: list[Path], tmp_path: Path, models: dict[str, Path]
) -> None:
    library = Library(tmp_path / "models")
    with pytest.raises(ModelNotFoundError, match="nothing-here"):
        resolve_model("nothing-here", library=library)
    with pytest.raises(NotAGgufError, match=r"bad-magic\.gguf"):
        resolve_file(models["bad_magic"])
    with pytest.raises(NotARegularFileError, match="is a folder"):
        resolve_file(tmp_path)
    split[1].unlink()
    with pytest.raises(GGUFHeaderError, match="missing"):
        resolve_file(split[2])
    mine = tmp_path / "mine.gguf"  # a copy: the session's models are shared by every test
    shutil.copy(models["f32"], mine)
    gone = import_model(mine, library=Library(tmp_path / "lib2"))
    mine.unlink()
    with pytest.raises(ModelNotInLibraryError, match="is gone"):
        resolve_model(gone.name, library=Library(tmp_path / "lib2"))


@pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs on Windows")
def test_every_part_is_checked_and_a_fifo_is_never_read(split: list[Path]) -> None:
    if sys.platform != "win32":  # always, where it runs (mypy --platform win32: no os.mkfifo)
        split[1].unlink()
        os.mkfifo(split[1])
        with pytest.raises(NotARegularFileError, match="named pipe"):
            resolve_file(split[0])


def test_the_plan_and_its_config_come_from_the_resolved_model(split: list[Path]) -> None:
    model = resolve_file(split[2])
    setup = plan_load(model, CPU, calibration=Calibration())
    assert setup.model is model
    assert setup.config.model_path == str(split[0])  # llama.cpp loads the first part
    assert setup.profile.files == tuple(p.name for p in split)


def test_serve_names_the_model_as_the_library_does(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mixdesk serve NAME-2` answers as NAME-2 (it used to take the file's name, NAME, the
    other model's name)."""
    monkeypatch.setenv("MIXDESK_HW", "gpu=none,ram=12GiB")
    library = Library(tmp_path / "models")
    other = tmp_path / "other" / models["q2_k"].name
    other.parent.mkdir()
    shutil.copy(models["q4_k_m"], other)
    import_model(models["q2_k"], library=library)
    second = import_model(other, library=library)
    args: argparse.Namespace = build_parser().parse_args(["serve", second.name])
    config, setup = serve_config(args, library=library)
    assert config.model_alias == second.name
    assert config.load.model_path == str(other)
    assert setup.model.library_name == second.name
