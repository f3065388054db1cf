"""Fetch a bundle .tar for `bundle/install`: https (certificates checked) or file, capped.

The command names the size and sha256 of the archive, so the download stops the moment it
passes that size (or the box's own cap), and the checksum is compared before anything
opens the file. Progress goes to a callback as a fraction, at most every PROGRESS_STEP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.errors import BadInputError, EdgeMonitorError

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
PROGRESS_STEP = 0.1


class DownloadError(EdgeMonitorError):
    """The bundle could not be fetched (network, server, size or checksum)."""


def _open(url: str, timeout_s: float, ca_file: Path | None) -> IO[bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        try:
            return open(path, "rb")
        except OSError as exc:
            raise DownloadError(f"{url}: cannot read ({exc.strerror or exc})") from exc
    if parts.scheme != "https":
        raise BadInputError(f"{url}: only https:// and file:// URLs are accepted")
    # Verifies the chain (against ca_file, or the system CAs) and the host name.
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        return urllib.request.urlopen(url, timeout=timeout_s, context=context)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"{url}: download failed ({exc})") from exc


def download(
    url: str,
    dest: Path,
    sha256: str,
    size_bytes: int,
    max_bytes: int,
    timeout_s: float,
    progress: Callable[[float], None] | None = None,
    ca_file: Path | None = None,
) -> Path:
    """Fetch `url` into `dest` (atomically); raises unless size and sha256 both match."""
    if size_bytes > max_bytes:
        raise BadInputError(
            f"size_bytes {size_bytes} is over this box's cap of {max_bytes} bytes; raise "
            "rollout.max_bundle_mb or ship a smaller bundle"
        )
    digest = hashlib.sha256()
    received = 0
    reported = 0.0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, _open(url, timeout_s, ca_file) as source, open(tmp, "wb") as out:
        while True:
            try:
                chunk = source.read(CHUNK_BYTES)
            except (OSError, ValueError) as exc:
                raise DownloadError(f"{url}: download broke off after {received} bytes "
                                    f"({exc})") from exc
            if not chunk:
                break
            received += len(chunk)
            if received > size_bytes:
                raise DownloadError(
                    f"{url}: more than the announced size_bytes {size_bytes}; refusing the rest "
                    "(give the archive's exact size)"
                )
            digest.update(chunk)
            out.write(chunk)
            fraction = received / size_bytes
            if progress is not None and fraction - reported >= PROGRESS_STEP:
                reported = fraction
                progress(fraction)
        out.flush()
        os.fsync(out.fileno())
        if received != size_bytes:
            raise DownloadError(
                f"{url}: got {received} bytes, the command announced {size_bytes}; the file "
                "is truncated or size_bytes is wrong"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise DownloadError(
                f"{url}: sha256 {actual[:12]}... does not match the command's "
                f"{sha256[:12]}...: the file was damaged or replaced; check the URL and checksum"
            )
    log.info("downloaded %s (%d bytes, sha256 %s...)", url, received, sha256[:12])
    return dest
