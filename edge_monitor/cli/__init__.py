"""`edge-monitor`: one command with subcommands, each a module of this package.

Only the module of the subcommand that runs is imported (see edge_monitor.core.subcommands),
so `edge-monitor run` never loads the demo or its synthesiser.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_monitor import __version__
from edge_monitor.core.subcommands import Subcommand, dispatch

COMMANDS = (
    Subcommand("check", "validate a daemon config and its bundle without starting "
               "(exit 0 ok, 2 bad)", "edge_monitor.cli.check"),
    Subcommand("demo", "run the real pipeline on a synthetic machine with injected faults: "
               "learning, alarms over a private MQTT broker, a summary", "edge_monitor.cli.demo"),
    Subcommand("devices", "List audio input devices (index, name, host API, channels, default "
               "rate).", "edge_monitor.cli.devices"),
    Subcommand("enroll", "enrol a machine's new normal sound (live or from files), roll back "
               "or cancel", "edge_monitor.cli.enroll"),
    Subcommand("fleet", "List every box and machine from the broker's retained topics "
               "(--json for scripts).", "edge_monitor.cli.fleet"),
    Subcommand("run", "run the monitor daemon: capture, score, decide, publish (stop with "
               "SIGTERM or Ctrl-C)", "edge_monitor.cli.run"),
    Subcommand("score", "Score audio files with a bundle and write filename,score rows.",
               "edge_monitor.cli.score"),
)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(
        argv, "edge-monitor", "Edge machine-sound monitor (the runtime).", __version__, COMMANDS
    )
