"""One command with subcommands, shared by `edge-monitor` and `edge-trainer`.

A subcommand module defines `configure(parser)` and `run(args) -> int`. The table of
subcommands names each module by its dotted path, and only the module of the subcommand
that runs is imported: `edge-monitor run` on an edge box loads the daemon, not the demo.
Errors the runtime raises on purpose become one line on stderr and an exit code
(2 = bad input).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from edge_monitor.core.errors import EXIT_BAD_INPUT, EdgeMonitorError


@dataclass(frozen=True)
class Subcommand:
    """A subcommand's name and help, and the module that configures and runs it."""

    name: str
    help: str
    module: str


def discover(package: ModuleType) -> list[Subcommand]:
    """Subcommands of a package whose modules define NAME, HELP and run, in name order.

    This imports every module; a package whose subcommands all need the same heavy
    libraries anyway (the trainer's need torch) loses nothing by it.
    """
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found.append(Subcommand(module.NAME, module.HELP, module.__name__))
    return found


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the options before it take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(
    prog: str, description: str, version: str, commands: Sequence[Subcommand],
    argv: Sequence[str],
) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The parser, with the options of the chosen subcommand only; and that subcommand's module."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv)
    module = None
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.name == chosen:
            module = importlib.import_module(command.module)
            module.configure(child)
    return parser, module


def dispatch(
    argv: Sequence[str] | None, prog: str, description: str, version: str,
    commands: Sequence[Subcommand],
) -> int:
    """Parse, set up logging, run the subcommand, map errors to exit codes."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, module = build_parser(prog, description, version, commands, argv)
    args = parser.parse_args(argv)
    assert module is not None  # argparse exits on an unknown or missing subcommand
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(module.run(args) or 0)
    except EdgeMonitorError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
