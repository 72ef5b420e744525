"""``mixdesk serve MODEL``: the local model on an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from mixdesk.core.serve import ServeConfig, is_loopback, start_server


def run_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (or the server ends); returns the exit status."""
    from mixdesk.commands.plan import machine
    from mixdesk.core.engine.client import LoadConfig, validate_load_config
    from mixdesk.core.library import model_name
    from mixdesk.core.model_profile import profile_local
    from mixdesk.core.planner import plan_offload

    validate_load_config(LoadConfig(args.model))
    plan = plan_offload(
        profile_local(args.model), machine(args), n_ctx=args.ctx, n_gpu_layers=args.ngl
    )
    config = ServeConfig(
        model_path=args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        model_alias=model_name(args.model),
        n_gpu_layers=plan.n_gpu_layers,
        n_ctx=plan.n_ctx,
        n_threads=args.threads,
    )
    if not is_loopback(args.host):
        sys.stderr.write(
            f"mixdesk: warning: listening on {args.host} makes the model reachable from other machines"
            + ("" if args.api_key else " without a key (add --api-key)")
            + ".\n"
        )
    signal.signal(signal.SIGTERM, _interrupt)
    server = start_server(config)
    try:  # from here on, however this ends, the server process ends with it
        sys.stderr.write(
            f"mixdesk: serving {config.model_alias} at {server.url} (OpenAI-compatible; "
            f"--ngl {config.n_gpu_layers}, context {config.n_ctx}). Ctrl-C stops.\n"
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


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops the server like Ctrl-C does."""
    raise KeyboardInterrupt
