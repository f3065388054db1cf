"""`edge-trainer`: one command with subcommands; each lives in `trainer.cli_commands`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge_monitor import __version__
from edge_monitor.core.subcommands import discover, dispatch
from trainer import cli_commands


def main(argv: Sequence[str] | None = None) -> int:
    try:
        commands = discover(cli_commands)
    except ModuleNotFoundError as exc:  # a runtime-only install (the edge box) has no torch
        if exc.name is None or exc.name.split(".")[0] in ("edge_monitor", "trainer"):
            raise
        print(f"edge-trainer: {exc.name} is not installed: the trainer needs the 'train' extra "
              "(pip install torch==2.13.0, then pip install '.[train]', see the README); an "
              "edge box needs only edge-monitor", file=sys.stderr)
        return 2
    return dispatch(
        argv,
        "edge-trainer",
        "Train, evaluate, fuse, distil and export models for the edge monitor.",
        __version__,
        commands,
    )


if __name__ == "__main__":
    sys.exit(main())
