"""Real small and read-only file systems for the full-disk and unwritable-directory tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `mount_point` with mount `options` (e.g. "size=64k", "ro,size=64k"):
    writes past its size fail with ENOSPC as on a full SD card. Needs root with mount rights;
    the test is skipped, saying why, where mounting is not allowed."""
    mount_point.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill_disk(directory: Path) -> None:
    """Fill the file system of `directory` to the last byte (big writes, then single bytes)."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * size):
                    continue
