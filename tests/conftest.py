"""Shared fixtures: every test runs with its own user directories and real generated models."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from mixdesk.core.engine import Engine
from tests.helpers import model_factory as mf
from tests.helpers.hub_server import HubState, serve_hub
from tests.helpers.limits import limit_address_space
from tests.helpers.mixdesk_workers import WorkerProcess, workers  # noqa: F401 - a fixture

# Before pytest-qt creates the (session-wide) QApplication: no display is needed, or used.
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["MIXDESK_NO_DIALOGS"] = "1"


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every user directory, the Hub cache and the token at tmp_path (no real home)."""
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_DATA_HOME", "data"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
        ("HF_HOME", "hf"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MIXDESK_DATA_DIR", "MIXDESK_HW"):
        monkeypatch.delenv(var, raising=False)
    # Any Hub access a test did not arrange fails at once instead of trying the internet.
    _point_hub_at(DEAD_ENDPOINT, monkeypatch)
    return home


DEAD_ENDPOINT = "http://127.0.0.1:9"


def _point_hub_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        url + "/{repo_id}/resolve/{revision}/{filename}",
    )


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HubState, str]]:
    """A real HTTP server speaking the Hub protocol on 127.0.0.1, and its URL (client pointed at it)."""
    state = HubState()
    with serve_hub(state) as url:
        _point_hub_at(url, monkeypatch)
        yield state, url


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated models, made once per test session."""
    d = tmp_path_factory.mktemp("models")
    f32 = mf.make_model(d, mf.TINY, "F32", name="tiny")
    return {
        "f32": f32,
        "q4_k_m": mf.make_model(d, mf.TINY, "Q4_K_M", name="tiny"),
        "q2_k": mf.make_model(d, mf.TINY, "Q2_K", name="tiny"),
        "no_template": mf.make_model(
            d,
            mf.with_changes(mf.TINY, chat_template=None, name="Mixtral 8x7B Instruct v0.1"),
            name="notemplate",
        ),
        "chatml": mf.make_model(
            d,
            mf.with_changes(
                mf.TINY, chat_template=mf.CHATML_TEMPLATE_FOR_TESTS, name="Some ChatML model"
            ),
            name="chatml",
        ),
        "legacy": mf.make_model(
            d, mf.with_changes(mf.TINY, legacy_expert_layout=True), name="legacy"
        ),
        "truncated": mf.truncated(f32, d / "truncated.gguf"),
        "bad_magic": mf.broken_magic(f32, d / "bad-magic.gguf"),
        "duplicate_vocab": mf.duplicate_vocab(d),
        "unknown_arch": mf.unknown_architecture(d),
        "text": mf.text_file(d),
    }


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A real engine (child process) whose log lives in tmp_path; closed after the test."""
    eng = Engine(log_dir=tmp_path / "engine-logs")
    try:
        yield eng
    finally:
        eng.close()


#: Address space an offload device's process may be given later (tests/helpers/limits.py).
ANSWER_HEADROOM = 64 << 20


@pytest.fixture
def rpc_servers(workers: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:  # noqa: F811 - the fixture
    """Start offload devices on loopback: real llama.cpp RPC servers (`mixdesk worker`, over
    the CPU backend) on a machine without a GPU.

    Call the fixture's value to start one; each is its own process, ended after the test.
    ``memory_budget`` bytes of address space beyond what it uses idle make a device that runs
    out of memory for real; ``MALLOC_ARENA_MAX`` keeps that address space predictable.
    """

    def start(memory_budget: int | None = None) -> WorkerProcess:
        # one malloc arena, and every large block its own mapping, unmapped when freed: the
        # address space a failed load took comes back (glibc would otherwise keep it)
        worker = workers(
            "--no-cache", env={"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        )
        if memory_budget is not None:
            limit_address_space(worker.proc.pid, memory_budget, headroom=ANSWER_HEADROOM)
        return worker

    return start


#: Layers of about 12 MiB (Q4_K_M) against compute buffers of about 20 MiB: a model whose
#: placement decides whether a small device runs out of memory.
OOM_SHAPE = mf.with_changes(
    mf.TINY, n_embd=512, n_ff=1536, n_layers=6, n_head=8, n_head_kv=2, n_expert=8, name="oom test"
)


@pytest.fixture(scope="session")
def oom_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :data:`OOM_SHAPE` model as Q4_K_M (about 80 MB, made once per session)."""
    return mf.make_model(tmp_path_factory.mktemp("oom"), OOM_SHAPE, "Q4_K_M", name="oom")
