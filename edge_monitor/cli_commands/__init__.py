"""Subcommands of `edge-monitor`, one module each (NAME, HELP, configure, run)."""
