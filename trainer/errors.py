"""Errors the trainer raises on purpose, rooted in the runtime's hierarchy so one CLI maps all.

A message says what failed, the offending file or value, and how to fix it.
"""

from __future__ import annotations

from edge_monitor.core.errors import BadInputError


class CheckpointError(BadInputError):
    """A checkpoint file does not match the model it should rebuild; exit code 2.

    The message names the file, the missing and unexpected keys, the shape mismatches and the fix.
    """
