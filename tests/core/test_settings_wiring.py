"""Settings that do what they say: every field is read by the app, the Models folder moves
the library, endpoints and sampling are typed, and load choices come from the settings."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import mixdesk
from mixdesk import paths
from mixdesk.core.engine import SamplingParams
from mixdesk.core.hub.library import Library, models_dir
from mixdesk.core.hub.pull import import_model
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.workspace.endpoints import Endpoint
from mixdesk.core.workspace.settings import Settings, load_endpoint_keys, save_endpoint_key

PACKAGE = Path(mixdesk.__file__).parent
#: Where a setting is declared and where it is only edited: reading it there does not count.
NOT_READERS = {"core/workspace/settings.py", "ui/settings_dialog.py"}


def _attributes_read() -> set[str]:
    """Names read as attributes (``x.name``) anywhere in MixDesk outside :data:`NOT_READERS`."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() in NOT_READERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def test_every_setting_is_read_somewhere() -> None:
    # Sampling fields are read through Settings.sampling(), which the app calls.
    read = _attributes_read()
    assert "sampling" in read
    sampling_fields = {f.name for f in fields(SamplingParams)}
    unread = [
        f.name for f in fields(Settings) if f.name not in read and f.name not in sampling_fields
    ]
    assert unread == []


def test_the_models_folder_comes_from_the_settings_given_never_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings are read once, where the app starts; the core is handed them (it used to
    read the settings file behind the caller's back)."""
    monkeypatch.delenv("MIXDESK_MODELS_DIR", raising=False)
    default = paths.data_dir() / "models"
    chosen = tmp_path / "my models"
    Settings(models_dir=str(tmp_path / "on disk")).save()  # not the settings handed in
    assert models_dir(Settings(models_dir=str(chosen))) == chosen
    assert models_dir(Settings()) == default
    # the environment variable still wins over the setting
    monkeypatch.setenv("MIXDESK_MODELS_DIR", str(tmp_path / "from env"))
    assert models_dir(Settings(models_dir=str(chosen))) == tmp_path / "from env"


def test_the_models_folder_setting_moves_the_terminals_library(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mixdesk` reads the settings once and opens the library in the folder they name."""
    monkeypatch.delenv("MIXDESK_MODELS_DIR", raising=False)
    chosen = tmp_path / "my models"
    Settings(models_dir=str(chosen)).save()
    entry = import_model(models["q2_k"], library=Library(chosen))
    proc = subprocess.run(
        [sys.executable, "-m", "mixdesk", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [m["name"] for m in json.loads(proc.stdout)] == [entry.name]
    assert not (paths.data_dir() / "models").exists()  # no library opened anywhere else


def test_endpoints_are_typed_and_saved_without_their_keys() -> None:
    settings = Settings()
    settings.add_endpoint(Endpoint("http://gpu-box:8080/v1", api_key="s3cret", name="TGI"))
    settings.add_endpoint(Endpoint("http://other:80/v1", model="mixtral"))
    settings.add_endpoint(Endpoint("http://gpu-box:8080/v1", name="TGI again"))  # replaces
    settings.save()
    text = Settings.path().read_text()
    assert "s3cret" not in text
    assert "api_key" not in text
    loaded = Settings.load()
    assert loaded.endpoints == [
        Endpoint("http://other:80/v1", model="mixtral"),
        Endpoint("http://gpu-box:8080/v1", name="TGI again"),
    ]
    save_endpoint_key("http://gpu-box:8080/v1", "s3cret")
    assert load_endpoint_keys() == {"http://gpu-box:8080/v1": "s3cret"}


def test_endpoints_written_by_an_older_version_are_read() -> None:
    Settings.path().parent.mkdir(parents=True, exist_ok=True)
    Settings.path().write_text(
        json.dumps(
            {
                "endpoints": [
                    {"name": "TGI", "url": "http://gpu-box:8080/v1", "model": "", "kind": "auto"},
                    {"name": "no address"},
                    "junk",
                ]
            }
        )
    )
    assert Settings.load().endpoints == [Endpoint("http://gpu-box:8080/v1", name="TGI")]


def test_sampling_defaults_are_sampling_params() -> None:
    settings = Settings(temperature=0.2, max_tokens=64, seed=7)
    sampling = settings.sampling()
    assert sampling == SamplingParams(
        temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1, max_tokens=64, seed=7
    )
    edited = settings.with_sampling(SamplingParams(top_k=5, max_tokens=9))
    assert (edited.top_k, edited.max_tokens, edited.seed) == (5, 9, None)
    assert edited.sampling() == SamplingParams(top_k=5, max_tokens=9)


def test_load_choices_come_from_the_settings() -> None:
    settings = Settings(n_ctx=1024, kv_type="q8_0", flash_attn=True, threads=3)
    assert LoadChoices.from_settings(settings) == LoadChoices(
        n_ctx=1024, kv_type="q8_0", flash_attn=True, n_threads=3
    )
    assert LoadChoices.from_settings(settings, n_gpu_layers=2).n_gpu_layers == 2
