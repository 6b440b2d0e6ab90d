"""The ``qgn`` command: one entry point, one sub-command per job.

Each sub-command lives beside the code it drives and exposes ``register(subparsers)``, which adds
its parser and sets ``func``; modules are imported here so ``qgn --help`` lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from qgn.errors import QGNError

# (module, description) -- import is deferred until the table is built so a broken optional
# module cannot hide the others.
SUBCOMMAND_MODULES = (
    "qgn.demo",
    "qgn.data.cli",
    "qgn.engine.train",
    "qgn.engine.evaluate",
    "qgn.engine.predict",
    "qgn.serving.cli",
    "qgn.export",
    "qgn.hub",
    "qgn.reproduce.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgn",
        description="Grounded Multimodal Named Entity Recognition with the Query-Guided Network.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # not written yet in this checkout
                continue
            raise
        module.register(sub)
    for command in sub.choices.values():
        _plain_help(command)
        # `qgn predict -v` as well as `qgn -v predict`; SUPPRESS: unset here, the top-level value stands
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging, and tracebacks instead of one-line errors",
        )
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Help is read in a terminal, where docstring markup (``code``) is noise."""
    plain = lambda text: text.replace("``", "") if isinstance(text, str) else text  # noqa: E731
    parser.description, parser.epilog = plain(parser.description), plain(parser.epilog)
    for action in parser._actions:
        action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _plain_help(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (QGNError, FileNotFoundError) as err:
        # Bad user input: one readable line, no traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"qgn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        # Whatever had to be saved was saved where it was interrupted; training says how to go on.
        if args.verbose:
            raise
        terminated = type(stop).__name__ == "Terminated"  # SIGTERM, turned into this by qgn train
        hint = getattr(stop, "hint", None)
        print(
            f"qgn {args.command}: {'terminated' if terminated else 'interrupted'}" + (f"; {hint}" if hint else ""),
            file=sys.stderr,
        )
        return 143 if terminated else 130
    except BrokenPipeError:
        # `qgn ... | head`: the reader has gone; stop quietly, as Unix tools do. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
