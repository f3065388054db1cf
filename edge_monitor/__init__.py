"""Edge machine-sound monitor: the runtime that runs beside the machine (no torch)."""

__version__ = "0.1.0"
