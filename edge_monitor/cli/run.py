"""`edge-monitor run -c CONF`: run the monitor daemon in the foreground (systemd, a shell)."""

from __future__ import annotations

import argparse

from edge_monitor.daemon import run_daemon


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="daemon config file (YAML)")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args.config)
