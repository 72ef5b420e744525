"""``mixdesk serve``: the local model on an OpenAI-compatible API, in its own process.

The server is llama-cpp-python's (FastAPI + uvicorn), started as a child process so a model
that makes llama.cpp abort ends only the server, and ``mixdesk serve`` says why. MixDesk adds
its own chat format: the model's GGUF template (Mixtral's ``[INST]`` for files without one)
with system prompts folded into the first user turn when the template has no system role,
so OpenAI clients that always send a system message work with Mixtral.

What MixDesk changes in that server's defaults (no cross-origin access, the key on every
route, no settings from the environment, an end with its parent) is in
:mod:`mixdesk.core.serving.security`. The settings, key included, travel on the child's stdin,
never on its command line, where every user of the machine could read them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixdesk import paths
from mixdesk.core.engine import diagnose
from mixdesk.core.engine.protocol import LoadConfig
from mixdesk.core.engine.wire import from_dict
from mixdesk.core.hub.library import model_name
from mixdesk.core.serving.security import (
    drop_setting_variables,
    exit_when_parent_ends,
    read_settings_line,
    secure_app,
    server_environment,
    url_host,
)
from mixdesk.errors import EngineCrashedError, MixdeskError

log = logging.getLogger(__name__)

CHAT_FORMAT = "mixdesk"


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a model."""

    #: How the model loads: the same LoadConfig `mixdesk chat` and the app use (mixdesk.core.loading.service).
    load: LoadConfig
    host: str = "127.0.0.1"
    port: int = 8080
    #: The key every request must carry (never shown in a repr, a log or a command line).
    api_key: str | None = field(default=None, repr=False)
    #: The model's name in the API (None: the file's name without ``.gguf``, never its path).
    model_alias: str | None = None
    #: Web origins allowed to call the API from a browser; none by default.
    cors_origins: tuple[str, ...] = ()

    @property
    def model_path(self) -> str:
        """The model file."""
        return self.load.model_path

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The settings line :func:`start_server` writes on the server's stdin."""
        data = json.loads(text)
        data["load"] = from_dict(LoadConfig, data["load"])
        data["cors_origins"] = tuple(data.get("cors_origins", ()))
        return from_dict(cls, data)


def register_chat_format(model_path: str) -> None:
    """Register MixDesk's chat format for ``model_path`` with llama-cpp-python (in the server
    process): the template the engine would choose, from the same metadata (all of it, as
    llama.cpp reads it), and the prompt prepared by the same rule (:mod:`.engine.prompt_tokens`)
    so that the server's tokens are the engine's."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

    from mixdesk.core.chat.template import ChatMessage, render_prompt, select_template
    from mixdesk.core.engine import prompt_tokens

    vocab = prompt_tokens.read_vocab_file(model_path)
    special = vocab.special
    template = select_template(vocab.metadata)

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
        prompt = render_prompt(template, turns, bos_token=special.bos, eos_token=special.eos)
        # added_special=False: llama-cpp-python tokenizes with add_special and parse_special,
        # as the engine does (prompt_tokens.tokenize)
        return ChatFormatterResponse(
            prompt=prompt_tokens.for_tokenizer(prompt, special),
            stop=[special.eos] if special.eos else None,
            added_special=False,
        )


def server_main() -> int:
    """Run the server (inside the child process started by :func:`start_server`).

    The settings come as one JSON line on stdin; the process ends when stdin closes.
    """
    import uvicorn
    from llama_cpp.server.app import create_app, router
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    config = ServeConfig.from_json(read_settings_line(sys.stdin.buffer))
    exit_when_parent_ends(sys.stdin.buffer)
    ignored = drop_setting_variables(
        os.environ, [*ModelSettings.model_fields, *ServerSettings.model_fields]
    )
    if ignored:
        log.warning("ignoring environment variables meant for llama-cpp-python: %s", ignored)
    register_chat_format(config.model_path)
    load = config.load
    from mixdesk.core.engine import llama_adapter, session

    session.register_devices(load)  # workers are devices before loading
    alias = config.model_alias or model_name(load.model_path)  # never the file's path
    # The model loads through the engine's own session code (the same Llama arguments, tensor
    # overrides and op offload); llama-cpp-python's settings only name it and its chat format.
    opened: list[session.OpenedModel] = []

    def load_model() -> Any:
        opened.append(session.open_llama(load, chat_format=CHAT_FORMAT))
        return opened[-1].llm

    llama_adapter.serve_model_from(load_model)
    model = ModelSettings(model=load.model_path, model_alias=alias, chat_format=CHAT_FORMAT)
    # The key is checked by MixDesk's own middleware (every route, constant time), not here.
    server = ServerSettings(host=config.host, port=config.port, api_key=None)
    app = create_app(server_settings=server, model_settings=[model])  # loads the model
    secure_app(
        app,
        api_key=config.api_key,
        cors_origins=config.cors_origins,
        host=config.host,
        model_alias=alias,
        routes=router.routes,
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


def server_command(config: ServeConfig) -> list[str]:
    """The command line of the server process (also inside a frozen bundle).

    It names the model only, for ``ps``; the settings and the key go to the child's stdin.
    """
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "mixdesk"]
    return [*base, "--llama-server", config.model_path]


class ServerProcess:
    """A running ``mixdesk serve`` child."""

    def __init__(self, config: ServeConfig, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.config = config
        self.proc = proc
        self.log_path = log_path

    @property
    def url(self) -> str:
        """The API root clients use."""
        return f"http://{url_host(self.config.host)}:{self.config.port}/v1"

    def death(self) -> EngineCrashedError:
        """Why the server ended."""
        return diagnose.engine_death(
            self.proc.poll(),
            diagnose.read_tail(self.log_path),
            during="serving the model",
            model_path=self.config.model_path,
            workers=self.config.load.rpc_servers,
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
        if self.proc.stdin is not None:
            self.proc.stdin.close()


def start_server(config: ServeConfig, *, timeout: float = 120.0) -> ServerProcess:
    """Start the server and wait until it accepts connections.

    Raises:
        MixdeskError: the port is taken.
        EngineCrashedError: the server died while starting (the cause from its log).
    """
    _check_port_free(config.host, config.port)
    log_dir = paths.ensure_private_dir(paths.log_dir())
    for old in sorted(log_dir.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)[:-10]:
        old.unlink(missing_ok=True)  # keep the last ten server logs
    log_path = log_dir / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with paths.private_file(log_path).open("ab") as log_file:
        proc = subprocess.Popen(
            server_command(config),
            stdin=subprocess.PIPE,  # the settings, then held open: EOF tells the child we ended
            stdout=log_file,
            stderr=log_file,
            env={**server_environment(os.environ), "GGML_NO_BACKTRACE": "1"},
        )
    server = ServerProcess(config, proc, log_path)
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(asdict(config)).encode("utf-8") + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died at once; the wait below says why
        _wait_until_listening(server, timeout)
    except BaseException:  # a failed or interrupted start leaves no server behind
        server.stop()
        raise
    return server


def _check_port_free(host: str, port: int) -> None:
    """Raise if ``port`` on ``host`` is taken (a clear sentence before the child starts)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        raise MixdeskError(f"Cannot listen on '{host}': no such address on this machine.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            raise MixdeskError(
                f"Port {port} on {host or 'every interface'} is already in use; "
                "choose another with --port."
            ) from None


def _wait_until_listening(server: ServerProcess, timeout: float) -> None:
    config, proc = server.config, server.proc
    deadline = time.monotonic() + timeout
    connect_host = url_host(config.host).strip("[]")
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
