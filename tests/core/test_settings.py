"""The settings file: whatever it holds, MixDesk starts, with defaults for what is bad."""

from __future__ import annotations

import json
import logging

import pytest

from mixdesk.core.workspace.settings import Settings


def _write(data: object) -> None:
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("data", [[], "settings", 42, None], ids=["list", "str", "int", "null"])
def test_a_file_without_settings_gives_the_defaults(
    data: object, caplog: pytest.LogCaptureFixture
) -> None:
    _write(data)
    with caplog.at_level(logging.WARNING, logger="mixdesk.core.workspace.settings"):
        assert Settings.load() == Settings()
    assert len(caplog.records) == 1


def test_each_wrongly_typed_value_falls_back_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _write(
        {
            "temperature": "hot",
            "top_p": True,
            "top_k": 1.5,
            "seed": "x",
            "flash_attn": "yes",
            "system_presets": ["a", "b"],
            "threads": 0.5,
            "kv_type": "q3",
            "n_ctx": None,
            "max_tokens": 2048,
            "min_p": 0,
            "system_prompt": "Be brief.",
            "models_dir": "/models",
            "unknown": {"kept": False},
        }
    )
    with caplog.at_level(logging.WARNING, logger="mixdesk.core.workspace.settings"):
        settings = Settings.load()
    defaults = Settings()
    bad = [
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "flash_attn",
        "system_presets",
        "threads",
        "kv_type",
    ]
    for name in bad:
        assert getattr(settings, name) == getattr(defaults, name), name
    assert (settings.max_tokens, settings.min_p, settings.n_ctx) == (2048, 0, None)
    assert (settings.system_prompt, settings.models_dir) == ("Be brief.", "/models")
    warned = sorted(str(r.args[0]) for r in caplog.records if isinstance(r.args, tuple))
    assert warned == sorted(bad)
    assert "setting temperature in" in caplog.records[0].getMessage()
