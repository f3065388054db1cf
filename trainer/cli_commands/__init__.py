"""Subcommands of `edge-trainer`, one module each (NAME, HELP, configure, run)."""
