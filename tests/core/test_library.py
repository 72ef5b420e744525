"""The library: unique names, files that `rm` can always reach, imports that refuse non-models."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from mixdesk.core.gguf.header_values import GGUFHeaderError
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import import_model, pull
from mixdesk.core.loading.model import resolve_model
from mixdesk.errors import CorruptModelError, user_message
from tests.helpers.hub_server import HubFile, HubRepo, HubState

FILE = "mixtral-tiny.Q4_K_M.gguf"


@pytest.fixture
def two_repos(hub: tuple[HubState, str], models: dict[str, Path], tmp_path: Path) -> Library:
    """The same file name in two repositories (different models), and a library."""
    state, _ = hub
    state.repos["TheBloke/Mixtral-tiny-GGUF"] = HubRepo(
        files={FILE: HubFile(data=models["q4_k_m"].read_bytes())}
    )
    state.repos["someone/Mixtral-tiny-GGUF"] = HubRepo(
        files={FILE: HubFile(data=models["q2_k"].read_bytes())}
    )
    return Library(tmp_path / "models")


def test_the_same_file_name_from_two_repos_gets_two_names(two_repos: Library) -> None:
    library = two_repos
    first = pull("TheBloke/Mixtral-tiny-GGUF", filename=FILE, library=library).entry
    second = pull("someone/Mixtral-tiny-GGUF", filename=FILE, library=library).entry
    assert first.name == "mixtral-tiny.Q4_K_M"
    assert second.name == "mixtral-tiny.Q4_K_M-2"
    assert {e.name: e.repo_id for e in library.entries()} == {
        "mixtral-tiny.Q4_K_M": "TheBloke/Mixtral-tiny-GGUF",
        "mixtral-tiny.Q4_K_M-2": "someone/Mixtral-tiny-GGUF",
    }
    resolved = resolve_model("mixtral-tiny.Q4_K_M-2", library=library)
    assert (str(resolved.path), resolved.library_name) == (second.path, "mixtral-tiny.Q4_K_M-2")
    # pulling one again keeps its name instead of taking a new one
    assert pull("someone/Mixtral-tiny-GGUF", filename=FILE, library=library).already_had
    library.remove(first.name)
    assert pull("TheBloke/Mixtral-tiny-GGUF", filename=FILE, library=library).entry.name == (
        "mixtral-tiny.Q4_K_M"
    )
    for entry in library.entries():
        library.remove(entry.name)
        assert not Path(entry.path).exists()
    assert library.entries() == []


def test_an_import_named_like_a_pulled_model_strands_nothing(
    two_repos: Library, models: dict[str, Path], tmp_path: Path
) -> None:
    library = two_repos
    pulled = pull("TheBloke/Mixtral-tiny-GGUF", filename=FILE, library=library).entry
    mine = tmp_path / "mine" / FILE
    mine.parent.mkdir()
    shutil.copy(models["q2_k"], mine)
    imported = import_model(mine, library=library)
    assert imported.name == "mixtral-tiny.Q4_K_M-2"
    assert library.get("mixtral-tiny.Q4_K_M") == pulled
    assert import_model(mine, library=library).name == imported.name  # the same file again
    # two legacy files of one name from two folders: two converted copies, not one overwritten
    legacy = []
    for folder in ("a", "b"):
        src = tmp_path / folder / "legacy.gguf"
        src.parent.mkdir()
        shutil.copy(models["legacy"], src)
        legacy.append(import_model(src, library=library))
    assert [e.name for e in legacy] == ["legacy", "legacy-2"]
    assert legacy[0].path != legacy[1].path
    assert all(Path(e.path).is_relative_to(library.root) for e in legacy)
    # rm reaches every model by name, or by the path of its file
    library.remove(pulled.path)
    assert not Path(pulled.path).exists()
    library.remove(imported.name)
    assert mine.exists()  # never the user's own file
    for e in legacy:
        library.remove(e.name)
        assert not Path(e.path).exists()
    assert library.entries() == []


def test_rm_keeps_a_file_another_model_still_uses(two_repos: Library) -> None:
    library = two_repos
    pulled = pull("TheBloke/Mixtral-tiny-GGUF", filename=FILE, library=library).entry
    again = import_model(Path(pulled.path), library=library)  # the pulled file, imported
    assert again.name == "mixtral-tiny.Q4_K_M-2"
    library.remove(again.name)
    assert Path(pulled.path).exists()
    library.remove(pulled.name)
    assert not Path(pulled.path).exists()


def _header(path: Path, *, block_count: int | float | None = 4, tensors: bool = True) -> Path:
    """A small GGUF written with gguf's own writer (a float block count is stored as a float)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("broken")
    if isinstance(block_count, float):
        writer.add_float32("llama.block_count", block_count)
    elif block_count is not None:
        writer.add_block_count(block_count)
    writer.add_float32("llama.expert_count", 4.0)
    if tensors:
        writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_import_refuses_headers_that_describe_no_model(tmp_path: Path) -> None:
    library = Library(tmp_path / "models")
    empty = _header(tmp_path / "empty.gguf", tensors=False)
    with pytest.raises(CorruptModelError) as err:
        import_model(empty, library=library)
    assert user_message(err.value) == (
        "empty.gguf has no tensors: it holds no model weights, so there is nothing to import."
    )
    for value, shown in ((math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")):
        bad = _header(tmp_path / f"count-{shown}.gguf", block_count=value)
        with pytest.raises(CorruptModelError) as err:
            import_model(bad, library=library)
        assert user_message(err.value) == (
            f"count-{shown}.gguf is damaged: its llama.block_count is {shown}, which is not a "
            "count, so it cannot be imported."
        )
    with pytest.raises(GGUFHeaderError, match=r"no usable llama\.block_count"):
        import_model(_header(tmp_path / "no-layers.gguf", block_count=None), library=library)
    assert library.entries() == []
    ok = import_model(_header(tmp_path / "fine.gguf", block_count=4), library=library)
    assert ok.name == "fine"
