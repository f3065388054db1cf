"""`edge-trainer`: one command with subcommands; each lives in `trainer.cli_commands`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge_monitor import __version__
from edge_monitor.core.subcommands import discover, dispatch
from trainer import cli_commands


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(
        argv,
        "edge-trainer",
        "Train, evaluate, fuse, distil and export models for the edge monitor.",
        __version__,
        discover(cli_commands),
    )


if __name__ == "__main__":
    sys.exit(main())
