"""Edge machine-sound monitor: the runtime that runs beside the machine (no torch)."""

import contextlib
import ctypes
import os

__version__ = "0.1.0"

# usearch's extension, imported before onnxruntime, makes onnxruntime's import crash
# (SIGSEGV in libstdc++'s codecvt; usearch 2.26, onnxruntime 1.32) unless the C++ runtime
# is already loaded with global symbols. Every usearch import goes through this package.
# Where there is no such library (not Linux/glibc) there is nothing to fix.
with contextlib.suppress(OSError):
    ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL)
