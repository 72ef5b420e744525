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
from typing import TYPE_CHECKING, NoReturn

from mixdesk import __version__
from mixdesk.commands.parsers import BUILDERS
from mixdesk.errors import InvalidArgumentError, user_message

if TYPE_CHECKING:
    from mixdesk.core.hub.library import Library

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
    for add_command in BUILDERS:  # one function per command, in mixdesk/commands/parsers.py
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mixdesk`` with ``argv`` (default: the process arguments); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Hidden entry points used by the app itself (they also work inside a frozen bundle).
    if args_list[:1] == ["--engine-process"]:
        from mixdesk.core.engine import process

        return process.main()
    if args_list[:1] == ["--llama-server"]:
        from mixdesk.core.serving.serve import server_main

        return server_main()  # its settings (and key) arrive on stdin
    if args_list[:1] == ["--worker-probe"]:
        from mixdesk.core.machine import rpc_worker

        return rpc_worker.main(args_list[1:])
    if args_list[:1] == ["--llama-reference"]:
        from mixdesk.core.engine import reference

        return reference.main()  # the request arrives on stdin
    if args_list[:1] == ["--qt-selftest"]:
        from mixdesk.ui.selftest import qt_selftest

        return qt_selftest()

    parser = build_parser()
    args = parser.parse_args(args_list)
    # `mixdesk plan M | head` ends quietly, as Unix tools do; never for the servers, where a
    # client that goes away must not end the process (`worker` ignores SIGPIPE itself).
    if args.command is not None and args.command not in ("worker", "serve"):
        ignore_sigpipe()
    from mixdesk.commands.terminal import sanitized_output

    with sanitized_output():  # nothing a model, a file or the network says can drive the terminal
        return _run(args, args_list)


def _run(args: argparse.Namespace, args_list: list[str]) -> int:
    """Run a parsed command; every error ends as one sentence and an exit status."""
    from mixdesk.logsetup import configure_logging, loggable_arguments

    configure_logging(verbose=args.verbose)
    log.info("mixdesk %s: %s", __version__, loggable_arguments(vars(args)))
    try:
        if args.command in _LIBRARY_COMMANDS:
            return _run_with_library(args, _library())
        if args.command == "hw":
            from mixdesk.commands.plan import run_hw

            return run_hw(args)
        if args.command in ("catalog", "list", "convert"):
            from mixdesk.commands import library as lib_cmd

            return {
                "convert": lib_cmd.run_convert,
                "catalog": lib_cmd.run_catalog,
                "list": lib_cmd.run_list,
            }[args.command](args)
        if args.command == "install-desktop":
            from mixdesk.core.machine import desktop

            done = desktop.uninstall() if args.uninstall else desktop.install()
            verb = "Removed" if args.uninstall else "Installed"
            sys.stderr.write(f"{verb} {len(done.files)} files under {desktop.data_home()}.\n")
            return EXIT_OK
        if args.command == "worker":
            from mixdesk.commands.worker import run_worker

            return run_worker(args)
        if args.command == "calibrate":
            from mixdesk.commands.calibrate import run_calibrate

            return run_calibrate(args)
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


#: The commands that use the model library (a library name works wherever a path does).
_LIBRARY_COMMANDS = ("chat", "plan", "serve", "pull", "models", "rm", "import")


def _library() -> Library:
    """The model library, in the models folder the settings name: the terminal's composition
    root (nothing below reads the settings or opens a library of its own)."""
    from mixdesk.core.hub.library import Library, models_dir
    from mixdesk.core.workspace.settings import Settings

    return Library(models_dir(Settings.load()))


def _run_with_library(args: argparse.Namespace, library: Library) -> int:
    """Run a command of :data:`_LIBRARY_COMMANDS` with ``library``."""
    if args.command == "chat":
        from mixdesk.commands.chat import run_chat

        return run_chat(args, library=library)
    if args.command == "plan":
        from mixdesk.commands.plan import run_plan

        return run_plan(args, library=library)
    if args.command == "serve":
        from mixdesk.commands.serve import run_serve

        return run_serve(args, library=library)
    from mixdesk.commands import library as lib_cmd

    return {
        "pull": lib_cmd.run_pull,
        "models": lib_cmd.run_models,
        "rm": lib_cmd.run_rm,
        "import": lib_cmd.run_import,
    }[args.command](args, library=library)


def ignore_sigpipe() -> None:
    """Let ``mixdesk ... | head`` end quietly, as Unix tools do."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
