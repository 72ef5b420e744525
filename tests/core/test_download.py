"""Downloads against a real HTTP server speaking the Hub protocol: resume, verify, errors, library."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from mixdesk.core.hub.api import HubFileInfo, list_models, pick_model
from mixdesk.core.hub.download import ChecksumMismatchError, DiskFullError, Downloader
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.library import Library, safe_target
from mixdesk.core.hub.pull import pull
from mixdesk.core.hub.remote_header import HubError, HubSizeMismatchError
from mixdesk.errors import InvalidArgumentError, user_message
from tests.helpers.hub_server import HubFile, HubRepo, HubState

REPO = "TheBloke/Mixtral-tiny-GGUF"


@pytest.fixture
def served(
    hub: tuple[HubState, str],
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[HubState, Library]:
    """The tiny models on the fake Hub, a library in tmp_path, small download chunks."""
    state, _ = hub
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)
    state.repos[REPO] = HubRepo(
        files={
            "mixtral-tiny.Q4_K_M.gguf": HubFile(data=models["q4_k_m"].read_bytes()),
            "mixtral-tiny.Q2_K.gguf": HubFile(
                data=models["f32"].read_bytes()[: 3 << 20] + b"x"
            ),  # not a model
            "README.md": HubFile(data=b"# tiny"),
            "split-00001-of-00002.gguf": HubFile(data=b"a" * 1000),
            "split-00002-of-00002.gguf": HubFile(data=b"b" * 1000),
        }
    )
    return state, Library(tmp_path / "models")


def _file(state: HubState, name: str) -> HubFileInfo:
    return next(f for m in list_models(REPO) for f in m.files if f.filename == name)


def test_list_groups_split_parts_and_reads_quant(served: tuple[HubState, Library]) -> None:
    models = {m.name: m for m in list_models(REPO)}
    assert set(models) == {"mixtral-tiny.Q4_K_M", "mixtral-tiny.Q2_K", "split"}
    assert models["mixtral-tiny.Q4_K_M"].quant == "Q4_K_M"
    assert len(models["split"].files) == 2
    assert models["split"].size == 2000
    assert models["mixtral-tiny.Q4_K_M"].files[0].sha256 is not None
    assert pick_model(list(models.values())).name == "mixtral-tiny.Q4_K_M"  # Q4_K_M by default
    with pytest.raises(HubError, match="no Q8_0 file here; available: Q2_K, Q4_K_M"):
        pick_model(list(models.values()), quant="Q8_0")


def test_pull_downloads_verifies_registers_and_chats(
    served: tuple[HubState, Library], tmp_path: Path
) -> None:
    state, library = served
    events: list[DownloadProgress] = []
    result = pull(REPO, library=library, on_progress=events.append)
    entry = result.entry
    assert entry.name == "mixtral-tiny.Q4_K_M"
    assert Path(entry.path).read_bytes() == state.repos[REPO].files["mixtral-tiny.Q4_K_M.gguf"].data
    assert entry.sha256 == hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
    assert Path(entry.path).is_relative_to(library.root)
    assert [e.phase for e in events][-2:] == ["verifying", "done"]
    assert len([e for e in events if e.phase == "downloading"]) >= 1
    assert library.get("mixtral-tiny.Q4_K_M") == entry
    again = pull(REPO, library=library)
    assert again.already_had
    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
    from mixdesk.core.loading.model import resolve_model

    with Engine(log_dir=tmp_path / "logs") as engine:
        model = resolve_model("mixtral-tiny.Q4_K_M", library=library)
        engine.load(LoadConfig(str(model.path), n_ctx=256))
        assert (
            engine.chat([ChatMessage("user", "hi")], SamplingParams(max_tokens=3))
            .wait()
            .stats.eval_tokens
            == 3
        )


def test_cancel_then_resume_continues_from_the_partial_bytes(
    served: tuple[HubState, Library],
) -> None:
    state, library = served
    state.throttle_bps = 4 << 20
    cancel = threading.Event()

    def stop_after_a_megabyte(p: DownloadProgress) -> None:
        if p.done_bytes >= 1 << 20:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="run it again to continue"):
        pull(REPO, library=library, on_progress=stop_after_a_megabyte, cancel=cancel)
    f = _file(state, "mixtral-tiny.Q4_K_M.gguf")
    partial = Downloader(library.root).partial_bytes(f)
    assert 1 << 20 <= partial < f.size
    assert library.entries() == []
    state.ranges.clear()
    state.throttle_bps = 0
    resumed: list[int] = []
    result = pull(REPO, library=library, on_progress=lambda p: resumed.append(p.resumed_from))
    assert (f"{REPO}/mixtral-tiny.Q4_K_M.gguf", f"bytes={partial}-") in state.ranges
    assert resumed[0] == partial
    assert hashlib.sha256(Path(result.entry.path).read_bytes()).hexdigest() == f.sha256


def test_a_dropped_connection_resumes_by_itself(served: tuple[HubState, Library]) -> None:
    state, library = served
    state.drop_after = 1_500_000
    result = pull(REPO, library=library)
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for _, r in state.ranges]
    assert len(starts) == 1
    assert 1_000_000 < starts[0] <= 1_500_000  # from the whole chunks written before the cut
    f = _file(state, "mixtral-tiny.Q4_K_M.gguf")
    assert hashlib.sha256(Path(result.entry.path).read_bytes()).hexdigest() == f.sha256


def test_wrong_bytes_are_rejected(served: tuple[HubState, Library]) -> None:
    state, library = served
    good = state.repos[REPO].files["mixtral-tiny.Q4_K_M.gguf"].data
    assert good is not None
    state.corrupt[f"{REPO}/mixtral-tiny.Q4_K_M.gguf"] = good[:1000] + b"\xff" + good[1001:]
    with pytest.raises(ChecksumMismatchError, match="arrived damaged"):
        pull(REPO, library=library)
    assert library.entries() == []
    f = _file(state, "mixtral-tiny.Q4_K_M.gguf")
    assert Downloader(library.root).partial_bytes(f) == 0
    assert not Downloader(library.root).target_path(f).exists()


def test_bytes_past_the_announced_size_are_refused(served: tuple[HubState, Library]) -> None:
    """A Hub that announces 1 MiB and sends the whole 4 MiB file fills no more than 1 MiB."""
    state, library = served
    hub_file = state.repos[REPO].files["mixtral-tiny.Q4_K_M.gguf"]
    hub_file.listed_size = 1 << 20
    f = _file(state, "mixtral-tiny.Q4_K_M.gguf")
    assert f.size == 1 << 20 < hub_file.size
    downloader = Downloader(library.root)
    with pytest.raises(HubSizeMismatchError) as info:
        downloader.download(f)
    assert user_message(info.value) == (
        "The Hub sent more than the 1,048,576 bytes it announced for mixtral-tiny.Q4_K_M.gguf, "
        "so MixDesk stopped the download there (nothing past that size was written). Try again "
        "later; if it happens again, the file on the Hub is not what the Hub says it is."
    )
    assert isinstance(info.value, HubError)
    assert downloader.partial_bytes(f) <= 1 << 20
    partial = library.root / ".partial"
    assert sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) <= 1 << 20
    assert not downloader.target_path(f).exists()


def test_missing_repo_file_and_gated(served: tuple[HubState, Library]) -> None:
    state, library = served
    with pytest.raises(HubError, match="no model repository someone/nothing-GGUF"):
        pull("someone/nothing-GGUF", library=library)
    with pytest.raises(HubError, match=r"no nothing\.gguf here"):
        pull(REPO, filename="nothing.gguf", library=library)
    state.repos[REPO].gated = True
    with pytest.raises(HubError, match="gated: accept its licence on the Hub, then set a token"):
        pull(REPO, library=library)
    assert library.entries() == []


def test_gated_repo_with_a_token(
    served: tuple[HubState, Library], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, library = served
    state.repos[REPO].gated = True
    monkeypatch.setenv("HF_TOKEN", state.repos[REPO].token)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", "/nonexistent")
    assert pull(REPO, library=library).entry.name == "mixtral-tiny.Q4_K_M"


def test_server_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="Cannot reach the Hugging Face Hub"):
        pull(REPO, library=Library(tmp_path / "models"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (needs root, which CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["/bin/mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["/bin/umount", "-l", str(mount)], check=False)


def test_disk_full_before_and_during(served: tuple[HubState, Library], small_disk: Path) -> None:
    state, _ = served
    library = Library(small_disk / "models")
    with pytest.raises(
        DiskFullError,
        match=r"needs 4\.2 MiB of free disk space \(and 256\.0 MiB to spare\) in .* but only 8\.0 MiB is free",
    ):
        pull(REPO, library=library)  # the free-space check refuses before any byte
    assert library.entries() == []
    f = _file(state, "mixtral-tiny.Q4_K_M.gguf")
    # space that vanishes while downloading: another program fills the disk
    downloader = Downloader(small_disk / "models")
    import mixdesk.core.hub.download as dl

    filled = threading.Event()

    def fill(p: DownloadProgress) -> None:
        if not filled.is_set() and p.done_bytes > 64 << 10:
            filled.set()
            with (small_disk / "filler").open("wb") as fh, contextlib.suppress(OSError):
                fh.write(b"\0" * (6 << 20))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "DISK_RESERVE", 0)
        big = HubFileInfo(f.repo_id, f.filename, f.size, f.sha256, f.revision)
        with pytest.raises(DiskFullError, match="disk filled up while downloading"):
            downloader.download(big, on_progress=fill)


def test_file_names_never_escape_the_models_folder(tmp_path: Path) -> None:
    for repo, name in (
        ("a/b", "../../etc/passwd"),
        ("a/b", "/etc/passwd"),
        ("a/..", "x.gguf"),
        ("a/b", "sub/../../x.gguf"),
        ("a/b", "C:\\x.gguf"),
        ("ab", "x.gguf"),
    ):
        with pytest.raises(InvalidArgumentError, match="outside the models folder"):
            safe_target(tmp_path, repo, name)
    assert (
        safe_target(tmp_path, "a/b", "sub/x.gguf")
        == (tmp_path / "a--b" / "sub" / "x.gguf").resolve()
    )


def test_several_downloads_at_once(served: tuple[HubState, Library]) -> None:
    state, library = served
    state.throttle_bps = 8 << 20
    downloader = Downloader(library.root)
    files = [_file(state, "mixtral-tiny.Q4_K_M.gguf"), _file(state, "mixtral-tiny.Q2_K.gguf")]
    results: dict[str, Path] = {}
    threads = [
        threading.Thread(target=lambda f=f: results.__setitem__(f.filename, downloader.download(f)))
        for f in files
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {f.filename for f in files}
    for f in files:
        assert hashlib.sha256(results[f.filename].read_bytes()).hexdigest() == f.sha256
    assert os.path.getsize(results["mixtral-tiny.Q2_K.gguf"]) == (3 << 20) + 1


def test_split_model_and_joined_pieces(hub: tuple[HubState, str], tmp_path: Path) -> None:
    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
    from mixdesk.core.gguf.synthetic import TINY, write_model
    from mixdesk.core.loading.model import resolve_model

    state, _ = hub
    (tmp_path / "src").mkdir()
    first = write_model(tmp_path / "src" / "tiny-split.gguf", TINY, split_parts=3)
    whole = write_model(tmp_path / "src" / "tiny-whole.gguf", TINY).read_bytes()
    files = {
        p.name: HubFile(data=p.read_bytes()) for p in sorted(first.parent.glob("tiny-split-*"))
    }
    files["tiny-joined.gguf.part1of2"] = HubFile(data=whole[: len(whole) // 2])
    files["tiny-joined.gguf.part2of2"] = HubFile(data=whole[len(whole) // 2 :])
    state.repos["me/tiny-GGUF"] = HubRepo(files=files)
    library = Library(tmp_path / "models")

    split = pull("me/tiny-GGUF", filename="tiny-split-00001-of-00003.gguf", library=library).entry
    assert len(split.parts) == 3
    assert all(Path(p).exists() for p in split.parts)
    joined = pull("me/tiny-GGUF", filename="tiny-joined.gguf", library=library).entry
    assert Path(joined.path).name == "tiny-joined.gguf"
    assert Path(joined.path).read_bytes() == whole
    assert not list(Path(joined.path).parent.glob("*.part*of*"))
    with Engine(log_dir=tmp_path / "logs") as engine:
        for entry in (split, joined):
            model = resolve_model(entry.parts[-1], library=library)  # any part: the first
            assert model.parts == tuple(Path(p) for p in entry.parts)
            engine.load(LoadConfig(str(model.path), n_ctx=256))
            assert (
                engine.chat([ChatMessage("user", "hi")], SamplingParams(max_tokens=3))
                .wait()
                .stats.eval_tokens
                == 3
            )


def test_hub_adapter_matches_the_installed_huggingface_hub() -> None:
    """The private huggingface_hub pieces the downloader uses are where the adapter expects."""
    from mixdesk.core.hub import adapter as hub_adapter

    hub_adapter.check_compatible()
    assert "user-agent" in {k.lower() for k in hub_adapter.build_headers(token=False)}
