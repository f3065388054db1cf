"""The demo harness: a synthetic machine, a scenario that runs the real daemon against it,
and a private loopback broker. Nothing the daemon runs imports this package.
"""
