"""MixDesk's settings, each declared once with its type, default and description.

Stored as JSON in the user config directory. The Hub token is deliberately not a setting:
it lives in huggingface_hub's own token storage (``HF_TOKEN`` or ``hf auth login``), never in
this file or the logs.
"""

from __future__ import annotations

import json
import logging
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mixdesk import paths
from mixdesk.core.chat.context_window import OverflowPolicy
from mixdesk.core.engine.kv_store import KvStore, default_directory
from mixdesk.core.engine.protocol import KV_CACHE_TYPES, KvCacheRequest, SamplingParams
from mixdesk.core.workspace.endpoints import Endpoint

log = logging.getLogger(__name__)

DEFAULT_PRESETS = {
    "Helpful assistant": "You are a helpful assistant. Answer clearly and concisely.",
    "Coder": "You are an expert programmer. Answer with working code and short explanations.",
    "Translator": "Translate the user's text into English, keeping its meaning and tone.",
}


@dataclass
class Settings:
    """All settings. Field metadata holds each one's description."""

    temperature: float = field(default=0.7, metadata={"doc": "Sampling temperature (0 = greedy)."})
    top_p: float = field(
        default=0.95, metadata={"doc": "Nucleus sampling: keep tokens up to this probability mass."}
    )
    top_k: int = field(
        default=40, metadata={"doc": "Keep only the k most likely tokens (0 = off)."}
    )
    min_p: float = field(
        default=0.05,
        metadata={"doc": "Drop tokens below this share of the top token's probability."},
    )
    repeat_penalty: float = field(
        default=1.1, metadata={"doc": "Penalty for repeating recent tokens."}
    )
    max_tokens: int = field(
        default=1024, metadata={"doc": "Longest answer in tokens (0 = until the context is full)."}
    )
    seed: int | None = field(
        default=None, metadata={"doc": "Random seed (empty = a new one each answer)."}
    )
    system_prompt: str = field(default="", metadata={"doc": "System prompt for new conversations."})
    system_presets: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_PRESETS),
        metadata={"doc": "Named system prompts to choose from."},
    )
    threads: int | None = field(
        default=None, metadata={"doc": "CPU threads (empty = physical cores)."}
    )
    models_dir: str | None = field(
        default=None,
        metadata={"doc": "Where models are stored (empty = default; MIXDESK_MODELS_DIR wins)."},
    )
    n_ctx: int | None = field(
        default=None, metadata={"doc": "Context length (empty = chosen by the planner)."}
    )
    kv_type: str = field(default="f16", metadata={"doc": "KV cache type: f16, q8_0 or q4_0."})
    flash_attn: bool = field(default=False, metadata={"doc": "Use flash attention."})
    last_model: str | None = field(
        default=None, metadata={"doc": "The model loaded last time (selected at start-up)."}
    )
    download_speed_bps: float = field(
        default=0.0,
        metadata={"doc": "Download speed the last download measured (bytes/s; 0 = none yet)."},
    )
    context_overflow: OverflowPolicy = field(
        default="drop_oldest",
        metadata={
            "doc": "When a conversation outgrows the context: drop_oldest (keep the system "
            "prompt and the last message) or stop."
        },
    )
    kv_cache_gib: float = field(
        default=4.0,
        metadata={
            "doc": "Disk space for conversations' saved KV states, so a long conversation "
            "resumes without reading its history again (GiB; 0 = none on disk)."
        },
    )
    kv_memory_gib: float = field(
        default=1.0,
        metadata={
            "doc": "Memory the engine keeps the last conversations' KV states in, so switching "
            "back and forth costs nothing (GiB; 0 = the KV cache and the disk only)."
        },
    )
    workers: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "Workers (HOST:PORT of `mixdesk worker` on other machines) whose GPUs the "
            "app spreads a model over."
        },
    )
    endpoints: list[Endpoint] = field(
        default_factory=list,
        metadata={
            "doc": "Remote OpenAI-compatible endpoints (name, url, model, kind); keys are kept apart."
        },
    )

    @classmethod
    def path(cls) -> Path:
        """The settings file."""
        return paths.config_dir() / "settings.json"

    @classmethod
    def load(cls) -> Settings:
        """Read the settings (defaults for anything missing or unreadable)."""
        try:
            data = json.loads(cls.path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            log.warning("settings unreadable (%s); using defaults", err)
            return cls()
        if not isinstance(data, dict):
            log.warning("settings file holds no settings; using defaults")
            return cls()
        values = _valid_values(data)
        values["endpoints"] = _endpoints_from_json(data.get("endpoints"))
        return cls(**values)

    def save(self) -> None:
        """Write the settings atomically (endpoints without their keys, which live apart)."""
        data = asdict(self)
        data["endpoints"] = [_endpoint_to_json(e) for e in self.endpoints]
        path = self.path()
        paths.ensure_private_dir(path.parent)
        paths.write_private_text(path, json.dumps(data, indent=2))  # 0600

    def sampling(self) -> SamplingParams:
        """The sampling defaults (a new conversation's starting point)."""
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def kv_cache(self, conversation: str) -> KvCacheRequest:
        """How the engine keeps ``conversation``'s KV state (``Engine.chat(cache=...)``)."""
        budget = _gib_bytes(self.kv_cache_gib)
        return KvCacheRequest(
            conversation,
            directory=str(default_directory()) if budget else "",
            disk_budget_bytes=budget,
            memory_budget_bytes=_gib_bytes(self.kv_memory_gib),
        )

    def kv_store(self) -> KvStore:
        """The KV states on disk, within this budget (Settings shows and clears them)."""
        return KvStore(default_directory(), budget_bytes=_gib_bytes(self.kv_cache_gib))

    def with_sampling(self, sampling: SamplingParams) -> Settings:
        """These settings with ``sampling`` as the defaults (its stop strings are not kept)."""
        return replace(
            self,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
        )

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Add ``endpoint`` last (replacing one at the same address), without its key."""
        kept = [e for e in self.endpoints if e.url != endpoint.url]
        self.endpoints = [*kept, replace(endpoint, api_key=None)]

    @staticmethod
    def describe() -> list[tuple[str, str, str]]:
        """(name, type, description) of every setting."""
        return [(f.name, str(f.type), f.metadata.get("doc", "")) for f in fields(Settings)]


def _gib_bytes(gib: float) -> int:
    """A budget in GiB as bytes (a negative one: none)."""
    return int(max(gib, 0.0) * (1 << 30))


def _fits(value: object, kind: Any) -> bool:
    """Whether a JSON value is of a setting's declared type (bool is not a number here)."""
    if kind is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (str, bool):
        return isinstance(value, kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return value in args
    if origin in (types.UnionType, typing.Union):
        return any(value is None if a is type(None) else _fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    return False


def _valid_values(data: dict[str, Any]) -> dict[str, Any]:
    """The values of ``data`` that have their setting's type; one warning for each other one.

    A settings file edited by hand (or by an older MixDesk) must never stop the app: a bad
    value falls back to its default. Endpoints are read by :func:`_endpoints_from_json`.
    """
    hints = typing.get_type_hints(Settings)
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name not in data or f.name == "endpoints":
            continue
        value = data[f.name]
        ok = _fits(value, hints[f.name])
        if ok and f.name == "kv_type":
            ok = value in KV_CACHE_TYPES
        if ok:
            values[f.name] = value
        else:
            log.warning(
                "setting %s in %s is %r, not a valid %s; using the default, %r",
                f.name,
                Settings.path(),
                value,
                f.type,
                getattr(defaults, f.name),
            )
    return values


#: The endpoint fields kept in the settings file (the key is kept apart).
_STORED_ENDPOINT_FIELDS = ("url", "model", "name", "kind")


def _endpoint_to_json(endpoint: Endpoint) -> dict[str, Any]:
    return {name: getattr(endpoint, name) for name in _STORED_ENDPOINT_FIELDS}


def _endpoints_from_json(items: object) -> list[Endpoint]:
    """Endpoints from the settings file; entries without an address are dropped."""
    endpoints = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            log.warning("ignoring an unreadable endpoint in the settings: %r", item)
            continue
        values = {k: item[k] for k in _STORED_ENDPOINT_FIELDS if isinstance(item.get(k), str)}
        values["model"] = values.get("model") or None  # older files wrote "" for none
        endpoints.append(Endpoint(**values))
    return endpoints


def endpoint_keys_path() -> Path:
    """Where endpoint API keys are kept: a separate file only the user can read."""
    return paths.config_dir() / "endpoint-keys.json"


def load_endpoint_keys() -> dict[str, str]:
    """API keys by endpoint URL."""
    try:
        data = json.loads(endpoint_keys_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_endpoint_key(url: str, key: str | None) -> None:
    """Remember (or forget) an endpoint's API key, in a file readable by the user only.

    The file is replaced atomically by a 0600 one (so a file left readable by others, or by
    an older version, is tightened), in a 0700 folder.
    """
    keys = load_endpoint_keys()
    if key:
        keys[url] = key
    else:
        keys.pop(url, None)
    path = endpoint_keys_path()
    paths.ensure_private_dir(path.parent)
    paths.write_private_text(path, json.dumps(keys))
