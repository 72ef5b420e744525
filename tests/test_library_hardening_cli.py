"""Two `mixdesk pull`s at once, `kill -9` in the middle of a legacy download, refused imports."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from mixdesk.core.gguf.convert import convert_legacy
from tests.helpers.hub_server import HubFile, HubRepo, HubState

MIXDESK = [sys.executable, "-m", "mixdesk"]
REPO = "TheBloke/Mixtral-tiny-GGUF"
MODERN = "mixtral-tiny.Q4_K_M.gguf"
LEGACY = "mixtral-tiny-legacy.F32.gguf"


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIXDESK, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture
def env(hub: tuple[HubState, str], models: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    state, url = hub
    state.repos[REPO] = HubRepo(
        files={
            MODERN: HubFile(data=models["q4_k_m"].read_bytes()),
            LEGACY: HubFile(data=models["legacy"].read_bytes()),
        }
    )
    return dict(os.environ, HF_ENDPOINT=url, MIXDESK_MODELS_DIR=str(tmp_path / "models"))


def test_two_pulls_at_once_download_once_and_end_with_the_hubs_sha256(
    hub: tuple[HubState, str], env: dict[str, str]
) -> None:
    state, _ = hub
    state.throttle_bps = 1 << 20  # about 4 s for the file: the two runs overlap
    procs = [
        subprocess.Popen(
            [*MIXDESK, "pull", REPO, "--quant", "Q4_K_M"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    ready = [e for e in errs if "Ready: mixtral-tiny.Q4_K_M" in e]
    waited = [e for e in errs if "another MixDesk is downloading it; waiting" in e]
    assert len(ready) == 1, errs
    assert len(waited) == 1, errs
    assert "Already in the library: mixtral-tiny.Q4_K_M" in waited[0]
    listed = json.loads(run("models", "--json", env=env).stdout)
    assert [m["name"] for m in listed] == ["mixtral-tiny.Q4_K_M"]
    hub_sha = state.repos[REPO].files[MODERN].digest()
    assert listed[0]["sha256"] == hub_sha
    assert hashlib.sha256(Path(listed[0]["path"]).read_bytes()).hexdigest() == hub_sha


def test_kill_9_during_a_legacy_download_resumes_and_leaves_nothing_behind(
    hub: tuple[HubState, str], env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    state, _ = hub
    state.throttle_bps = 4 << 20
    proc = subprocess.Popen(
        [*MIXDESK, "pull", REPO, "--file", LEGACY],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = tmp_path / "models" / ".partial" / "TheBloke--Mixtral-tiny-GGUF"
    state_file = partial / f"{LEGACY}.converting.json"
    deadline = time.monotonic() + 60
    consumed = 0
    while consumed < 4 << 20 and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            consumed = json.loads(state_file.read_text())["consumed"]
        except (OSError, ValueError):
            consumed = 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert consumed >= 4 << 20, "no merging download state appeared"
    assert not (partial / f"{LEGACY}.part").exists()
    state.throttle_bps = 0
    state.ranges.clear()
    done = run("pull", REPO, "--file", LEGACY, "--json", env=env)
    assert done.returncode == 0, done.stderr
    # (the plan's header reads ask for closed ranges; the download asks for "from N on")
    [resumed_at] = [int(r[6:-1]) for _, r in state.ranges if r.endswith("-")]
    assert resumed_at >= consumed
    entry = json.loads(done.stdout)
    assert entry["converted"] is True
    expected = tmp_path / "expected.gguf"
    convert_legacy(models["legacy"], expected)
    assert Path(entry["path"]).read_bytes() == expected.read_bytes()
    left = [p.name for p in (tmp_path / "models").rglob("*") if p.is_file()]
    assert sorted(left) == sorted(["library.sqlite", LEGACY])
    chat = run("chat", entry["name"], "--prompt", "hi", "--max-tokens", "2", "--json", env=env)
    assert chat.returncode == 0, chat.stderr


def test_import_of_a_header_without_tensors_is_one_sentence(
    env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(empty), "llama")
    writer.add_block_count(4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    proc = run("import", str(empty), env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "mixdesk: empty.gguf has no tensors: it holds no model weights, so there is nothing to "
        "import."
    ]
    assert json.loads(run("models", "--json", env=env).stdout) == []


def test_rm_reaches_two_models_with_one_file_name(
    env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    assert run("pull", REPO, "--file", MODERN, env=env).returncode == 0
    mine = tmp_path / "mine" / MODERN
    mine.parent.mkdir()
    mine.write_bytes(models["q2_k"].read_bytes())
    imported = run("import", str(mine), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "Imported mixtral-tiny.Q4_K_M-2" in imported.stderr
    names = [m["name"] for m in json.loads(run("models", "--json", env=env).stdout)]
    assert sorted(names) == ["mixtral-tiny.Q4_K_M", "mixtral-tiny.Q4_K_M-2"]
    pulled = tmp_path / "models" / "TheBloke--Mixtral-tiny-GGUF" / MODERN
    assert run("rm", "mixtral-tiny.Q4_K_M", env=env).returncode == 0
    assert not pulled.exists()
    assert run("rm", "mixtral-tiny.Q4_K_M-2", env=env).returncode == 0
    assert mine.exists()
    assert json.loads(run("models", "--json", env=env).stdout) == []
