"""`edge-monitor`: one command with subcommands; each lives in `edge_monitor.cli_commands`.

A subcommand module defines NAME, HELP, `configure(parser)` and `run(args) -> int`. Errors
the runtime raises on purpose become one line on stderr and an exit code (2 = bad input).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from edge_monitor import __version__, cli_commands
from edge_monitor.errors import EXIT_BAD_INPUT, EdgeMonitorError

log = logging.getLogger("edge_monitor")


def discover(package: ModuleType) -> list[ModuleType]:
    """Subcommand modules of a package, in name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found.append(module)
    return found


def build_parser(prog: str, description: str, version: str, package: ModuleType) -> tuple[
    argparse.ArgumentParser, dict[str, ModuleType]
]:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for module in discover(package):
        child = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(child)
        modules[module.NAME] = module
    return parser, modules


def dispatch(
    argv: Sequence[str] | None, prog: str, description: str, version: str, package: ModuleType
) -> int:
    """Parse, set up logging, run the subcommand, map errors to exit codes."""
    parser, modules = build_parser(prog, description, version, package)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(modules[args.command].run(args) or 0)
    except EdgeMonitorError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(
        argv, "edge-monitor", "Edge machine-sound monitor (the runtime).", __version__, cli_commands
    )


if __name__ == "__main__":
    sys.exit(main())
