"""``mixdesk``: the terminal front end over mixdesk.core.

With no command it opens the desktop app. Every error
ends as one sentence on stderr and a non-zero exit, never a traceback; the full story goes
to the log file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from mixdesk import __version__
from mixdesk.commands.common import (
    add_hardware_arguments,
    add_load_arguments,
    non_negative_int,
    positive_int,
)
from mixdesk.commands.keys import add_key_arguments
from mixdesk.errors import InvalidArgumentError, user_message

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one sentence, like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}; see `{self.prog} --help`.\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``mixdesk`` argument parser with all its commands."""
    parser = _Parser(
        prog="mixdesk",
        description="Run Mixtral-class models on one ordinary machine.",
        epilog="With no command, MixDesk opens its desktop window.",
    )
    parser.add_argument("--version", action="version", version=f"MixDesk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the log to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    chat = commands.add_parser("chat", help="chat with a model in the terminal")
    chat.add_argument("model", metavar="MODEL", nargs="?", help="a .gguf file or a library name")
    remote = chat.add_argument_group(
        "remote endpoint (TGI, llama-server, vLLM, Inference Endpoints)"
    )
    remote.add_argument(
        "--endpoint", metavar="URL", help="chat with an OpenAI-compatible server instead"
    )
    add_key_arguments(remote, purpose="the endpoint's API key (default: the one saved in the app)")
    remote.add_argument(
        "--model", dest="model_name", metavar="NAME", help="the model to ask the endpoint for"
    )
    chat.add_argument("--prompt", help="answer this one message and exit (otherwise: interactive)")
    chat.add_argument("--system", help="system prompt")
    add_load_arguments(chat)
    sampling = chat.add_argument_group("sampling")
    sampling.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        metavar="N",
        help="tokens to generate at most (0: until the context is full; default 512)",
    )
    sampling.add_argument("--temperature", "--temp", type=float, default=0.7, metavar="T")
    sampling.add_argument("--top-p", type=float, default=0.95, metavar="P")
    sampling.add_argument("--top-k", type=non_negative_int, default=40, metavar="K")
    sampling.add_argument("--min-p", type=float, default=0.05, metavar="P")
    sampling.add_argument("--repeat-penalty", type=float, default=1.1, metavar="R")
    sampling.add_argument(
        "--seed", type=non_negative_int, metavar="N", help="random seed (default: random)"
    )
    sampling.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)"
    )
    chat.add_argument(
        "--json", action="store_true", help="print one JSON object with the answer and its speed"
    )

    add_hardware_arguments(chat)

    plan = commands.add_parser("plan", help="show how a model would be split between GPU and RAM")
    plan.add_argument(
        "model",
        metavar="MODEL",
        help="a .gguf file, or OWNER/REPO/FILE.gguf on the Hub (header only)",
    )
    add_load_arguments(plan, runs=False)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_hardware_arguments(plan)

    serve = commands.add_parser("serve", help="serve a model on an OpenAI-compatible API")
    serve.add_argument("model", metavar="MODEL", help="a .gguf file or a library name")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    serve.add_argument("--port", type=positive_int, default=8080, help="port (default 8080)")
    add_key_arguments(serve, purpose="require this key from clients on every route")
    serve.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API; repeatable "
        "(default: no web page can)",
    )
    add_load_arguments(serve)
    add_hardware_arguments(serve)

    hw = commands.add_parser("hw", help="show the GPUs, RAM and CPU MixDesk sees")
    hw.add_argument("--json", action="store_true", help="print as JSON")
    add_hardware_arguments(hw)

    pull = commands.add_parser(
        "pull", help="download a model from the Hugging Face Hub (resumable)"
    )
    pull.add_argument(
        "repo",
        metavar="REPO",
        help="a Hub repository, e.g. TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF",
    )
    which = pull.add_mutually_exclusive_group()
    which.add_argument("--file", metavar="NAME", help="the file to get")
    which.add_argument("--quant", metavar="Q", help="the quantisation to get (default Q4_K_M)")
    pull.add_argument("--revision", metavar="REV", help="a branch, tag or commit")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    add_hardware_arguments(pull)

    catalog = commands.add_parser("catalog", help="the Mixtral models MixDesk knows, with sizes")
    catalog.add_argument("--json", action="store_true", help="print as JSON")
    ls = commands.add_parser("list", help="list the GGUF models of a Hub repository")
    ls.add_argument("repo", metavar="REPO")
    ls.add_argument("--json", action="store_true", help="print as JSON")

    models = commands.add_parser("models", help="list the models in the library")
    models.add_argument("--json", action="store_true", help="print as JSON")
    rm = commands.add_parser("rm", help="remove a model from the library and delete its files")
    rm.add_argument("name", metavar="NAME")
    imp = commands.add_parser(
        "import", help="add a local .gguf to the library (converting legacy Mixtral files)"
    )
    imp.add_argument("path", metavar="PATH")
    conv = commands.add_parser(
        "convert", help="convert a legacy per-expert Mixtral GGUF to the merged layout"
    )
    conv.add_argument("input", metavar="IN")
    conv.add_argument("output", metavar="OUT")

    desktop = commands.add_parser(
        "install-desktop", help="add MixDesk to the application menu (Linux)"
    )
    desktop.add_argument("--uninstall", action="store_true", help="remove it again")

    doctor = commands.add_parser("doctor", help="check that MixDesk can run here, and how")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mixdesk`` with ``argv`` (default: the process arguments); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Hidden entry points used by the app itself (they also work inside a frozen bundle).
    if args_list[:1] == ["--engine-worker"]:
        from mixdesk.core.engine import worker

        return worker.main()
    if args_list[:1] == ["--llama-server"]:
        from mixdesk.core.serve import server_main

        return server_main()  # its settings (and key) arrive on stdin
    if args_list[:1] == ["--qt-selftest"]:
        from mixdesk.ui.selftest import qt_selftest

        return qt_selftest()

    parser = build_parser()
    args = parser.parse_args(args_list)
    from mixdesk.commands.terminal import sanitized_output

    with sanitized_output():  # nothing a model, a file or the network says can drive the terminal
        return _run(args, args_list)


def _run(args: argparse.Namespace, args_list: list[str]) -> int:
    """Run a parsed command; every error ends as one sentence and an exit status."""
    from mixdesk.logsetup import configure_logging, loggable_arguments

    configure_logging(verbose=args.verbose)
    log.info("mixdesk %s: %s", __version__, loggable_arguments(vars(args)))
    try:
        if getattr(args, "model", None):
            from mixdesk.core.library import Library

            args.model = Library().resolve(args.model)  # a library name works wherever a path does
        if args.command == "chat":
            from mixdesk.commands.chat import run_chat

            return run_chat(args)
        if args.command in ("plan", "hw"):
            from mixdesk.commands import plan as plan_cmd

            return plan_cmd.run_plan(args) if args.command == "plan" else plan_cmd.run_hw(args)
        if args.command in ("pull", "models", "rm", "import", "convert", "catalog", "list"):
            from mixdesk.commands import library as lib_cmd

            return {
                "pull": lib_cmd.run_pull,
                "models": lib_cmd.run_models,
                "rm": lib_cmd.run_rm,
                "import": lib_cmd.run_import,
                "convert": lib_cmd.run_convert,
                "catalog": lib_cmd.run_catalog,
                "list": lib_cmd.run_list,
            }[args.command](args)
        if args.command == "serve":
            from mixdesk.commands.serve import run_serve

            return run_serve(args)
        if args.command == "install-desktop":
            from mixdesk.core import desktop

            done = desktop.uninstall() if args.uninstall else desktop.install()
            verb = "Removed" if args.uninstall else "Installed"
            sys.stderr.write(f"{verb} {len(done.files)} files under {desktop.data_home()}.\n")
            return EXIT_OK
        if args.command == "doctor":
            from mixdesk.commands.doctor import run_doctor

            return run_doctor(args)
        from mixdesk.ui.app import run_app

        return run_app()
    except KeyboardInterrupt:
        sys.stderr.write("\nmixdesk: stopped.\n")
        return 130
    except Exception as err:
        if not isinstance(err, InvalidArgumentError):
            log.debug("command failed", exc_info=err)
        sys.stderr.write(f"mixdesk: {user_message(err)}\n")
        return EXIT_ERROR


def ignore_sigpipe() -> None:
    """Let ``mixdesk ... | head`` end quietly, as Unix tools do."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
