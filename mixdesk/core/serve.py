"""``mixdesk serve``: the local model on an OpenAI-compatible API, in its own process.

The server is llama-cpp-python's (FastAPI + uvicorn), started as a child process so a model
that makes llama.cpp abort ends only the server, and ``mixdesk serve`` says why. MixDesk adds
its own chat format: the model's GGUF template (Mixtral's ``[INST]`` for files without one)
with system prompts folded into the first user turn when the template has no system role,
so OpenAI clients that always send a system message work with Mixtral.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixdesk import paths
from mixdesk.core.engine import diagnose
from mixdesk.errors import EngineCrashedError, MixdeskError

log = logging.getLogger(__name__)

CHAT_FORMAT = "mixdesk"


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a model."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    model_alias: str | None = None
    n_gpu_layers: int = 0
    n_ctx: int = 4096
    n_threads: int | None = None
    flash_attn: bool = False


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register_chat_format(model_path: str) -> None:
    """Register MixDesk's chat format for ``model_path`` with llama-cpp-python (in the server process)."""
    import gguf
    from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

    from mixdesk.core.chat_template import ChatMessage, render_prompt, select_template

    reader = gguf.GGUFReader(model_path)
    metadata: dict[str, str] = {}
    for key in (
        "tokenizer.chat_template",
        "general.name",
        "general.architecture",
        "llama.expert_count",
    ):
        field = reader.fields.get(key)
        if field is not None:
            metadata[key] = str(field.contents())
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    bos_id = reader.fields.get("tokenizer.ggml.bos_token_id")
    eos_id = reader.fields.get("tokenizer.ggml.eos_token_id")
    bos = tokens[int(bos_id.contents())] if bos_id is not None else ""
    eos = tokens[int(eos_id.contents())] if eos_id is not None else ""
    template = select_template(metadata)

    def text_of(content: Any) -> str:
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content or "")

    @register_chat_format(CHAT_FORMAT)  # type: ignore[untyped-decorator]
    def mixdesk_format(messages: list[dict[str, Any]], **_kwargs: Any) -> Any:
        turns = [
            ChatMessage(str(m["role"]), text_of(m.get("content")))
            for m in messages
            if m.get("role") in ("system", "user", "assistant")
        ]
        prompt = render_prompt(template, turns, bos_token=bos, eos_token=eos)
        return ChatFormatterResponse(prompt=prompt, stop=[eos] if eos else None, added_special=True)


def server_main(config_json: str) -> int:
    """Run the server (inside the child process started by :func:`start_server`)."""
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    config = ServeConfig(**json.loads(config_json))
    register_chat_format(config.model_path)
    model = ModelSettings(
        model=config.model_path,
        model_alias=config.model_alias,
        n_gpu_layers=config.n_gpu_layers,
        n_ctx=config.n_ctx,
        n_threads=config.n_threads or 1,
        n_threads_batch=config.n_threads or 1,
        flash_attn=config.flash_attn,
        chat_format=CHAT_FORMAT,
        verbose=True,
    )
    if config.n_threads is None:
        import psutil

        cores = psutil.cpu_count(logical=False) or 1
        model = model.model_copy(update={"n_threads": cores, "n_threads_batch": cores})
    server = ServerSettings(host=config.host, port=config.port, api_key=config.api_key)
    app = create_app(server_settings=server, model_settings=[model])
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


def server_command(config: ServeConfig) -> list[str]:
    """The command line of the server process (also inside a frozen bundle)."""
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "mixdesk"]
    return [*base, "--llama-server", json.dumps(asdict(config))]


class ServerProcess:
    """A running ``mixdesk serve`` child."""

    def __init__(self, config: ServeConfig, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.config = config
        self.proc = proc
        self.log_path = log_path

    @property
    def url(self) -> str:
        """The API root clients use."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "", "::") else self.config.host  # noqa: S104 - display only
        return f"http://{host}:{self.config.port}/v1"

    def death(self) -> EngineCrashedError:
        """Why the server ended."""
        return diagnose.engine_death(
            self.proc.poll(),
            diagnose.read_tail(self.log_path),
            during="serving the model",
            model_path=self.config.model_path,
        )

    def stop(self) -> None:
        """End the server."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(config: ServeConfig, *, timeout: float = 120.0) -> ServerProcess:
    """Start the server and wait until it accepts connections.

    Raises:
        MixdeskError: the port is taken.
        EngineCrashedError: the server died while starting (the cause from its log).
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError:
            raise MixdeskError(
                f"Port {config.port} on {config.host} is already in use; choose another with --port."
            ) from None
    log_dir = paths.ensure_dir(paths.log_dir())
    for old in sorted(log_dir.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)[:-10]:
        old.unlink(missing_ok=True)  # keep the last ten server logs
    log_path = log_dir / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            server_command(config),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env={**__import__("os").environ, "GGML_NO_BACKTRACE": "1"},
        )
    server = ServerProcess(config, proc, log_path)
    try:
        _wait_until_listening(server, timeout)
    except BaseException:  # a failed or interrupted start leaves no server behind
        server.stop()
        raise
    return server


def _wait_until_listening(server: ServerProcess, timeout: float) -> None:
    config, proc = server.config, server.proc
    deadline = time.monotonic() + timeout
    connect_host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host  # noqa: S104
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise server.death()
        try:
            with socket.create_connection((connect_host, config.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise MixdeskError(
        f"The server did not start within {timeout:.0f} s; the log is {server.log_path}."
    )
