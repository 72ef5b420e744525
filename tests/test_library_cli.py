"""``mixdesk pull / models / rm / import / convert`` as a user runs them, against the local Hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from tests.helpers import model_factory as mf
from tests.helpers.hub_server import HubFile, HubRepo, HubState

MIXDESK = [sys.executable, "-m", "mixdesk"]
REPO = "TheBloke/Mixtral-tiny-GGUF"


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIXDESK, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture
def env(hub: tuple[HubState, str], models: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    state, url = hub
    legacy = mf.make_model(
        tmp_path / "legacy",
        mf.with_changes(mf.TINY, legacy_expert_layout=True),
        "Q2_K",
        name="mixtral-tiny-legacy",
    )
    state.repos[REPO] = HubRepo(
        files={
            "mixtral-tiny.Q4_K_M.gguf": HubFile(data=models["q4_k_m"].read_bytes()),
            "mixtral-tiny-legacy.Q2_K.gguf": HubFile(data=legacy.read_bytes()),
        }
    )
    return dict(os.environ, HF_ENDPOINT=url, MIXDESK_MODELS_DIR=str(tmp_path / "models"))


def test_pull_prints_the_plan_then_progress_then_chats(env: dict[str, str]) -> None:
    proc = run("pull", REPO, "--quant", "Q4_K_M", "--vram", "8GiB", env=env)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert err.index("On this machine: --ngl 5 (full)") < err.index("mixtral-tiny.Q4_K_M.gguf: [")
    assert "100.0%" in err
    assert " MiB/s" in err and " MB/s" not in err  # one unit system: sizes and speeds in MiB
    assert "Ready: mixtral-tiny.Q4_K_M" in err
    listed = json.loads(run("models", "--json", env=env).stdout)
    assert [m["name"] for m in listed] == ["mixtral-tiny.Q4_K_M"]
    assert listed[0]["repo_id"] == REPO
    assert listed[0]["sha256"]
    chat = run(
        "chat", "mixtral-tiny.Q4_K_M", "--prompt", "hi", "--max-tokens", "4", "--json", env=env
    )
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["stats"]["eval_tokens"] == 4
    plan = run("plan", "mixtral-tiny.Q4_K_M", "--json", env=env)
    assert json.loads(plan.stdout)["n_layers"] == 4
    again = run("pull", REPO, "--quant", "Q4_K_M", env=env)
    assert "Already in the library" in again.stderr


def test_pull_of_a_legacy_file_converts_it_and_chats(env: dict[str, str]) -> None:
    proc = run("pull", REPO, "--quant", "Q2_K", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)
    assert entry["converted"] is True
    assert "legacy per-expert layout" in entry["converted_from"]
    names = {t.name for t in gguf.GGUFReader(entry["path"]).tensors}
    assert "blk.0.ffn_gate_exps.weight" in names
    assert not any(".ffn_gate.0." in n for n in names)
    chat = run("chat", entry["name"], "--prompt", "hi", "--max-tokens", "4", "--json", env=env)
    assert chat.returncode == 0, chat.stderr


def test_kill_9_then_pull_again_resumes(
    hub: tuple[HubState, str], env: dict[str, str], tmp_path: Path
) -> None:
    state, _ = hub
    state.throttle_bps = 1 << 20
    proc = subprocess.Popen(
        [*MIXDESK, "pull", REPO, "--quant", "Q4_K_M"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = (
        tmp_path
        / "models"
        / ".partial"
        / "TheBloke--Mixtral-tiny-GGUF"
        / "mixtral-tiny.Q4_K_M.gguf.part"
    )
    deadline = time.monotonic() + 60
    while (
        not partial.exists() or partial.stat().st_size < 1 << 20
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    have = partial.stat().st_size
    assert have >= 1 << 20
    state.throttle_bps = 0
    state.ranges.clear()
    done = run("pull", REPO, "--quant", "Q4_K_M", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert (f"{REPO}/mixtral-tiny.Q4_K_M.gguf", f"bytes={have}-") in state.ranges
    entry = json.loads(done.stdout)
    assert (
        Path(entry["path"]).read_bytes() == state.repos[REPO].files["mixtral-tiny.Q4_K_M.gguf"].data
    )


def test_rm_import_and_convert(
    env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    assert run("pull", REPO, "--quant", "Q4_K_M", env=env).returncode == 0
    path = Path(json.loads(run("models", "--json", env=env).stdout)[0]["path"])
    rm = run("rm", "mixtral-tiny.Q4_K_M", env=env)
    assert rm.returncode == 0
    assert not path.exists()
    assert json.loads(run("models", "--json", env=env).stdout) == []
    missing = run("rm", "mixtral-tiny.Q4_K_M", env=env)
    assert missing.returncode == 1
    assert "no model called mixtral-tiny.Q4_K_M" in missing.stderr
    imported = run("import", str(models["legacy"]), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "converted to the merged expert layout" in imported.stderr
    assert models["legacy"].exists()  # an import never deletes the user's own file
    out = tmp_path / "converted.gguf"
    conv = run("convert", str(models["legacy"]), str(out), env=env)
    assert conv.returncode == 0, conv.stderr
    assert "Converted 12 expert groups" in conv.stderr
    again = run("convert", str(out), str(tmp_path / "x.gguf"), env=env)
    assert again.returncode == 1
    assert "needs no conversion" in again.stderr


def test_pull_errors_are_one_sentence(env: dict[str, str]) -> None:
    for args, words in (
        (("someone/missing-GGUF",), "no model repository"),
        ((REPO, "--quant", "Q8_0"), "no Q8_0 file here"),
        ((REPO, "--file", "../../x.gguf"), "no ../../x.gguf here"),
    ):
        proc = run("pull", *args, env=env)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert words in lines[0]
    down = run("pull", REPO, env=dict(env, HF_ENDPOINT="http://127.0.0.1:9"))
    assert down.returncode == 1
    assert "Cannot reach the Hugging Face Hub" in down.stderr


def test_catalog_and_list(env: dict[str, str]) -> None:
    catalog = json.loads(run("catalog", "--json", env=env).stdout)
    thebloke = next(
        m for m in catalog if m["repo_id"] == "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"
    )
    assert {f["quant"] for f in thebloke["files"]} == {
        "Q2_K",
        "Q3_K_M",
        "Q4_K_M",
        "Q5_K_M",
        "Q6_K",
        "Q8_0",
    }
    assert any(m["repo_id"] == "TheBloke/Mixtral-8x7B-v0.1-GGUF" for m in catalog)
    assert any(f.get("split") for m in catalog for f in m["files"])
    text = run("catalog", env=env).stdout
    assert " GiB  " in text and " GB  " not in text  # one unit system (GiB) everywhere
    listed = json.loads(run("list", REPO, "--json", env=env).stdout)
    assert {m["quant"] for m in listed} == {"Q4_K_M", "Q2_K"}
