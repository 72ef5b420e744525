"""``mixdesk serve MODEL``: the local model on an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from mixdesk.commands.common import calibration_store, load_choices, machine
from mixdesk.commands.keys import api_key_from
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.model import resolve_model
from mixdesk.core.loading.service import LoadSetup, plan_load
from mixdesk.core.machine.net import is_loopback
from mixdesk.core.serving.security import check_origins
from mixdesk.core.serving.serve import ServeConfig, start_server


def serve_config(args: argparse.Namespace, *, library: Library) -> tuple[ServeConfig, LoadSetup]:
    """What ``mixdesk serve`` will run: the server settings and the planned load.

    The API names the model as the user does: its library name, else its file name.
    """
    api_key = api_key_from(args)
    cors_origins = check_origins(args.cors)
    choices = load_choices(args)
    choices.validate()  # a bad value is reported before any file is read
    model = resolve_model(args.model, library=library)
    setup = plan_load(model, machine(args), choices, calibration=calibration_store().read())
    config = ServeConfig(
        load=setup.config,
        host=args.host,
        port=args.port,
        api_key=api_key,
        model_alias=model.name,
        cors_origins=cors_origins,
    )
    return config, setup


def run_serve(args: argparse.Namespace, *, library: Library) -> int:
    """Serve until Ctrl-C (or the server ends); returns the exit status."""
    config, setup = serve_config(args, library=library)
    api_key, cors_origins = config.api_key, config.cors_origins
    _warn_about_exposure(args.host, api_key=api_key, cors_origins=cors_origins)
    signal.signal(signal.SIGTERM, _interrupt)
    server = start_server(config)
    try:  # from here on, however this ends, the server process ends with it
        sys.stderr.write(
            f"mixdesk: serving {config.model_alias} at {server.url} (OpenAI-compatible; "
            f"--ngl {setup.config.n_gpu_layers}, context {setup.config.n_ctx}). Ctrl-C stops.\n"
            f"mixdesk: {setup.summary}\n"
        )
        sys.stderr.flush()
        while server.proc.poll() is None:
            time.sleep(0.2)
        raise server.death()
    except KeyboardInterrupt:
        sys.stderr.write("mixdesk: server stopped.\n")
        return 0
    finally:
        server.stop()


def _warn_about_exposure(host: str, *, api_key: str | None, cors_origins: tuple[str, ...]) -> None:
    """Say so when more than this machine's own programs can use the model."""
    no_key = " without a key (add MIXDESK_API_KEY or --api-key-file)"
    if not is_loopback(host):
        sys.stderr.write(
            f"mixdesk: warning: listening on {host or 'every interface'} makes the model "
            f"reachable from other machines{'' if api_key else no_key}.\n"
        )
    if "*" in cors_origins:
        sys.stderr.write(
            "mixdesk: warning: --cors '*' lets any web page open in a browser here use the "
            f"model{'' if api_key else no_key}.\n"
        )


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops the server like Ctrl-C does."""
    raise KeyboardInterrupt
