"""Planning a model on the Hub from its header only, against a real local Hub server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.hub.remote_header import HubError, parse_model_ref, profile_ref
from mixdesk.core.machine.hardware import MIB
from mixdesk.core.planning.planner import plan_offload
from mixdesk.errors import InvalidArgumentError
from tests.helpers import model_factory as mf
from tests.helpers.hub_server import HubFile, HubRepo, HubState
from tests.helpers.machines import V100

REPO = "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"
LEGACY = "mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("remote")
    types = mf.modern_quant_types(d / "probe", "Q4_K_M", n_layers=56)
    return {
        "legacy": mf.mixtral_header_file(
            d, "Q4_K_M", legacy=True, name=LEGACY.removesuffix(".gguf")
        ),
        "split": mf.mixtral_header_file(
            d,
            "Q4_K_M",
            cfg=mf.MIXTRAL_8X22B,
            types=types,
            split_count=5,
            name="mixtral-8x22b.Q4_K_M",
        ),
    }


def _serve(state: HubState, files: dict[str, Path], *, gated: bool = False) -> None:
    sparse_sha = "ab" * 32  # the data is a hole; nobody verifies it when reading headers
    repo = HubRepo(gated=gated)
    repo.files[LEGACY] = HubFile(path=files["legacy"], sha256=sparse_sha)
    for part in sorted(files["split"].parent.glob("mixtral-8x22b.Q4_K_M-*-of-00005.gguf")):
        repo.files[part.name] = HubFile(path=part, sha256=sparse_sha)
    state.repos[REPO] = repo


def test_remote_plan_reads_a_few_mib_and_equals_the_local_plan(
    hub: tuple[HubState, str], files: dict[str, Path]
) -> None:
    state, _ = hub
    _serve(state, files)
    remote = profile_ref(parse_model_ref(f"{REPO}/{LEGACY}"))
    sent = state.sent(f"{REPO}/{LEGACY}")
    assert 0 < sent <= 8 * MIB
    assert all(r.startswith("bytes=") for _, r in state.ranges)
    local = profile_local(files["legacy"])
    assert remote.layer_bytes == local.layer_bytes
    assert remote.weights_bytes == local.weights_bytes
    assert plan_offload(remote, V100, n_ctx=2048) == plan_offload(local, V100, n_ctx=2048)


def test_remote_split_model_reads_every_part(
    hub: tuple[HubState, str], files: dict[str, Path]
) -> None:
    state, _ = hub
    _serve(state, files)
    profile = profile_ref(parse_model_ref(f"{REPO}/mixtral-8x22b.Q4_K_M-00001-of-00005.gguf"))
    assert len(profile.files) == 5
    assert profile.n_layers == 56
    for i in range(1, 6):
        assert 0 < state.sent(f"{REPO}/mixtral-8x22b.Q4_K_M-{i:05d}-of-00005.gguf") <= 8 * MIB
    assert profile.weights_bytes == profile_local(files["split"]).weights_bytes


def test_hub_errors_are_sentences(hub: tuple[HubState, str], files: dict[str, Path]) -> None:
    state, _ = hub
    _serve(state, files, gated=True)
    with pytest.raises(HubError, match="gated: accept its licence"):
        profile_ref(parse_model_ref(f"{REPO}/{LEGACY}"))
    state.repos[REPO].gated = False
    with pytest.raises(HubError, match=r"has no file nothing\.gguf"):
        profile_ref(parse_model_ref(f"{REPO}/nothing.gguf"))
    with pytest.raises(HubError, match="no model repository someone/missing"):
        profile_ref(parse_model_ref("someone/missing/x.gguf"))


def test_hub_unreachable() -> None:
    with pytest.raises(HubError, match="Cannot reach the Hugging Face Hub"):
        profile_ref(parse_model_ref(f"{REPO}/{LEGACY}"))


def test_model_refs(tmp_path: Path) -> None:
    local = tmp_path / "m.gguf"
    local.write_bytes(b"GGUF")
    assert parse_model_ref(str(local)).path == local
    ref = parse_model_ref(f"{REPO}/sub/{LEGACY}@main")
    assert (ref.repo_id, ref.filename, ref.revision) == (REPO, f"sub/{LEGACY}", "main")
    with pytest.raises(InvalidArgumentError, match="Model file not found"):
        parse_model_ref(str(tmp_path / "missing.gguf"))
    with pytest.raises(InvalidArgumentError, match="neither"):
        parse_model_ref("hello")


def test_plan_command_on_a_hub_file(hub: tuple[HubState, str], files: dict[str, Path]) -> None:
    state, url = hub
    _serve(state, files)
    env = dict(os.environ, HF_ENDPOINT=url)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "plan",
            f"{REPO}/{LEGACY}",
            "--vram",
            "15860MiB/16160MiB",
            "--ctx",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "Plan: --ngl 19 (18 of 32 layers + output on GPU; partial offload), context 2048"
        in proc.stdout
    )
    assert "old per-expert Mixtral layout" in proc.stdout
    assert "`mixdesk pull` converts it while downloading" in proc.stdout
    assert state.sent(f"{REPO}/{LEGACY}") <= 8 * MIB
