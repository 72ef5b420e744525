"""Downloads that nothing corrupts: two at once, a crash at any point, legacy files merged as they arrive.

Against the real HTTP server speaking the Hub protocol (tests/helpers/hub_server.py), a real SQLite
library and real generated models.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from mixdesk.core.gguf.convert import convert_legacy
from mixdesk.core.hub.api import HubFileInfo, list_models
from mixdesk.core.hub.download import ChecksumMismatchError, Downloader, DownloadInProgressError
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import pull
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.planning.calibration import Calibration
from mixdesk.errors import user_message
from mixdesk.paths import UnsafeFileError, open_private
from tests.helpers.hub_server import HubFile, HubRepo, HubState

REPO = "TheBloke/Mixtral-tiny-GGUF"
MODERN = "mixtral-tiny.Q4_K_M.gguf"
LEGACY = "mixtral-tiny-legacy.F32.gguf"


@pytest.fixture
def served(
    hub: tuple[HubState, str],
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[HubState, Library]:
    """A modern and a legacy tiny Mixtral on the local Hub, and a library in tmp_path."""
    state, _ = hub
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)
    state.repos[REPO] = HubRepo(
        files={
            MODERN: HubFile(data=models["q4_k_m"].read_bytes()),
            LEGACY: HubFile(data=models["legacy"].read_bytes()),
        }
    )
    return state, Library(tmp_path / "models")


@pytest.fixture
def merged_legacy(models: dict[str, Path], tmp_path: Path) -> bytes:
    """The legacy model converted after the fact: what a download must end up with."""
    out = tmp_path / "expected" / "merged.gguf"
    out.parent.mkdir()
    convert_legacy(models["legacy"], out)
    return out.read_bytes()


def _file(name: str) -> HubFileInfo:
    return next(f for m in list_models(REPO) for f in m.files if f.filename == name)


def _allocated(root: Path) -> int:
    """Bytes the file system holds for everything under ``root`` (holes not counted)."""
    total = 0
    for p in root.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except FileNotFoundError:  # renamed or removed while we looked
            pass
    return total


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != "library.sqlite" and not p.name.endswith(".gguf")
    )


# -- one download per target --------------------------------------------------------------


def test_a_second_pull_of_the_same_model_says_already_downloading(
    served: tuple[HubState, Library],
) -> None:
    state, library = served
    state.throttle_bps = 2 << 20
    started = threading.Event()

    def note(p: DownloadProgress) -> None:
        if p.done_bytes > 0:
            started.set()

    def first() -> None:
        pull(REPO, filename=MODERN, library=library, on_progress=note)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(30)
    with pytest.raises(DownloadInProgressError) as err:
        pull(REPO, filename=MODERN, library=library)
    assert str(err.value) == (
        f"{MODERN} is already downloading (in another MixDesk window or command); "
        "wait for that download to finish."
    )
    with pytest.raises(DownloadInProgressError, match="already downloading"):
        Downloader(library.root).download(_file(MODERN))
    waited: list[str] = []
    second = pull(
        REPO,
        filename=MODERN,
        library=library,
        wait=True,
        on_progress=lambda p: waited.append(p.phase),
    )
    thread.join(30)
    assert waited[0] == "waiting"
    assert second.already_had
    path = Path(second.entry.path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == state.repos[REPO].files[MODERN].digest()
    assert [e.name for e in library.entries()] == ["mixtral-tiny.Q4_K_M"]
    assert _leftovers(library.root) == []


# -- a crash at any point -------------------------------------------------------------------


def test_a_crash_after_verify_before_the_library_row_downloads_nothing_again(
    served: tuple[HubState, Library],
) -> None:
    state, library = served
    f = _file(MODERN)
    # What a process killed between moving the verified file into place and writing the
    # library row leaves on disk: the file in place, no row.
    Downloader(library.root).download(f)
    assert library.entries() == []
    state.bytes_sent.clear()
    entry = pull(REPO, filename=MODERN, library=library).entry
    assert state.sent(f"{REPO}/{MODERN}") == 0
    assert entry.sha256 == f.sha256
    assert hashlib.sha256(Path(entry.path).read_bytes()).hexdigest() == f.sha256
    assert _leftovers(library.root) == []


def test_a_verified_file_moved_in_by_an_older_mixdesk_is_checked_not_downloaded(
    served: tuple[HubState, Library],
) -> None:
    state, library = served
    f = _file(MODERN)
    target = Downloader(library.root).target_path(f)
    target.parent.mkdir(parents=True)
    target.write_bytes(state.repos[REPO].files[MODERN].read(0, f.size))  # no record beside it
    state.bytes_sent.clear()
    assert pull(REPO, filename=MODERN, library=library).entry.path == str(target)
    assert state.sent(f"{REPO}/{MODERN}") == 0
    target.write_bytes(b"GGUF" + b"\0" * (f.size - 4))  # same size, other bytes: downloaded again
    library.remove("mixtral-tiny.Q4_K_M", delete_files=False)
    entry = pull(REPO, filename=MODERN, library=library).entry
    assert state.sent(f"{REPO}/{MODERN}") == f.size
    assert hashlib.sha256(Path(entry.path).read_bytes()).hexdigest() == f.sha256


def test_leftovers_of_an_interrupted_conversion_go_and_nothing_is_downloaded_again(
    served: tuple[HubState, Library], merged_legacy: bytes
) -> None:
    state, library = served
    f = _file(LEGACY)
    # An older MixDesk downloaded the legacy file, then died while converting it.
    original = Downloader(library.root).download(f)
    leftover = original.with_name("mixtral-tiny-legacy.F32.merged.gguf.converting")
    leftover.write_bytes(b"GGUF half a conversion")
    state.bytes_sent.clear()
    result = pull(REPO, filename=LEGACY, library=library)
    assert state.sent(f"{REPO}/{LEGACY}") == 0
    assert result.converted
    assert not leftover.exists()
    assert Path(result.entry.path).read_bytes() == merged_legacy
    assert _leftovers(library.root) == []
    # A crash after a download merged as it came was moved into place, before the row.
    library.remove(result.entry.name)
    merged = Downloader(library.root).download_file(f, merge_experts=True)
    assert merged.converted
    state.bytes_sent.clear()
    again = pull(REPO, filename=LEGACY, library=library)
    assert state.sent(f"{REPO}/{LEGACY}") == 0
    assert again.converted
    assert Path(again.entry.path).read_bytes() == merged_legacy
    assert _leftovers(library.root) == []


# -- legacy files merged while they download ------------------------------------------------


def test_a_legacy_file_is_merged_while_it_downloads_in_one_files_space(
    served: tuple[HubState, Library], merged_legacy: bytes
) -> None:
    state, library = served
    f = _file(LEGACY)
    peak = [0]

    def sample(*_args: object) -> None:
        peak[0] = max(peak[0], _allocated(library.root))

    result = pull(REPO, filename=LEGACY, library=library, on_progress=sample, on_convert=sample)
    sample()
    assert result.converted
    assert "legacy per-expert layout" in (result.entry.converted_from or "")
    assert Path(result.entry.path).read_bytes() == merged_legacy
    assert result.entry.sha256 == f.sha256  # the Hub's, over the stream as it came
    assert state.sent(f"{REPO}/{LEGACY}") == f.size  # fetched once
    assert peak[0] < 1.15 * f.size, f"{peak[0]} bytes on disk for a {f.size}-byte file"
    assert _leftovers(library.root) == []
    # The sha256 is the stream's, even though its bytes went to other places: one flipped
    # bit inside an expert (which lands in the merged file) is caught.
    library.remove(result.entry.name)
    good = state.repos[REPO].files[LEGACY].data
    assert good is not None
    at = len(good) // 2
    state.corrupt[f"{REPO}/{LEGACY}"] = good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :]
    with pytest.raises(ChecksumMismatchError, match="arrived damaged"):
        pull(REPO, filename=LEGACY, library=library)
    assert library.entries() == []
    assert _leftovers(library.root) == []
    assert not list(library.root.rglob("*.gguf"))


def test_a_legacy_download_resumes_from_its_merged_bytes(
    served: tuple[HubState, Library], merged_legacy: bytes
) -> None:
    state, library = served
    state.throttle_bps = 16 << 20
    f = _file(LEGACY)
    cancel = threading.Event()

    def stop_half_way(p: DownloadProgress) -> None:
        if p.done_bytes >= f.size // 2:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        pull(REPO, filename=LEGACY, library=library, on_progress=stop_half_way, cancel=cancel)
    partial_dir = library.root / ".partial" / "TheBloke--Mixtral-tiny-GGUF"
    have = Downloader(library.root).partial_bytes(f)
    assert f.size // 2 <= have < f.size
    assert (partial_dir / f"{LEGACY}.converting").exists()
    assert not (partial_dir / f"{LEGACY}.part").exists()  # never a copy of the legacy bytes
    state.throttle_bps = 0
    state.ranges.clear()
    result = pull(REPO, filename=LEGACY, library=library)
    assert state.ranges == [(f"{REPO}/{LEGACY}", f"bytes={have}-")]
    assert result.converted
    assert result.entry.sha256 == f.sha256
    assert Path(result.entry.path).read_bytes() == merged_legacy
    assert _leftovers(library.root) == []


@pytest.fixture
def small_disk(tmp_path: Path, models: dict[str, Path]) -> Iterator[Path]:
    """A tmpfs with room for the legacy model once (plus the reserve), not twice."""
    import subprocess

    from mixdesk.core.hub.download import DISK_RESERVE

    size = DISK_RESERVE + int(1.5 * models["legacy"].stat().st_size)
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["/bin/mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["/bin/umount", "-l", str(mount)], check=False)


def test_the_disk_check_for_a_legacy_file_asks_for_one_files_size(
    served: tuple[HubState, Library], small_disk: Path, merged_legacy: bytes
) -> None:
    from mixdesk.core.machine.hardware import HardwareInfo

    library = Library(small_disk / "models")
    cpu = HardwareInfo(
        ram_total_bytes=8 << 30, ram_available_bytes=8 << 30, physical_cores=2, logical_cores=2
    )
    planner = lambda profile: make_plan(profile, cpu, LoadChoices(), calibration=Calibration())  # noqa: E731
    result = pull(REPO, filename=LEGACY, library=library, plan=planner)  # knows it is legacy
    assert result.converted
    assert result.plan is not None
    assert Path(result.entry.path).read_bytes() == merged_legacy


# -- files and folders of a download ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".part", ".done.tmp"])
def test_a_link_planted_where_a_download_writes_is_refused_not_followed(
    served: tuple[HubState, Library], tmp_path: Path, suffix: str
) -> None:
    """Model bytes (``.part``) or the verified record (``.done.tmp``) never land in a link's target."""
    _, library = served
    f = _file(MODERN)
    downloader = Downloader(library.root)
    part = downloader.partial_path(f)
    planted = part.with_name(part.name.removesuffix(".part") + suffix)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted.parent.mkdir(parents=True)
    planted.symlink_to(victim)
    with pytest.raises(UnsafeFileError) as info:
        downloader.download(f)
    assert user_message(info.value) == (
        f"{planted} is a symbolic link or not a plain file, so MixDesk did not write to it "
        "(a download writes only files of its own); delete it and try again."
    )
    assert victim.read_bytes() == b"precious"
    planted.unlink()
    path = downloader.download(f)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256


def test_open_private_refuses_links_fifos_and_folders(tmp_path: Path) -> None:
    link, fifo, folder, plain = (tmp_path / n for n in ("link", "fifo", "folder", "plain"))
    link.symlink_to(tmp_path / "target")
    os.mkfifo(fifo)
    folder.mkdir()
    for path in (link, fifo, folder):
        for mode in ("ab", "wb", "r+b"):
            with pytest.raises(UnsafeFileError):
                open_private(path, mode)
    assert not (tmp_path / "target").exists()
    old_umask = os.umask(0o022)
    try:
        with open_private(plain, "ab") as fh:
            fh.write(b"x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600


def test_model_folders_are_made_private(served: tuple[HubState, Library]) -> None:
    _, library = served
    f = _file(MODERN)
    old_umask = os.umask(0o022)
    try:
        path = Downloader(library.root).download(f)
    finally:
        os.umask(old_umask)
    folders = [library.root, library.root / ".partial", path.parent]
    folders.append(Downloader(library.root).partial_path(f).parent)
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in folders} == {
        str(p): 0o700 for p in folders
    }
