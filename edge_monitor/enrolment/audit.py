"""The enrolment audit log: who did what to which bank versions, one fsynced JSON line each."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUDIT_NAME = "enrolment-audit.jsonl"


def utc_stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only JSONL record of enrolments and rollbacks; each line fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one line. A failed write (a full disk) is logged with the record instead
        and the file cut back to its last whole line: the audit never masks the error of
        the enrolment it records, nor leaves half a line."""
        line = json.dumps({"at": utc_stamp(), **record}, sort_keys=True) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab", buffering=0) as handle:
                    size = handle.tell()
                    try:
                        data = line.encode("utf-8")
                        if handle.write(data) != len(data):
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        os.fsync(handle.fileno())
                    except OSError:
                        with contextlib.suppress(OSError):
                            handle.truncate(size)
                        raise
            except OSError as exc:
                log.error("audit log %s: cannot append (%s); the record: %s", self.path,
                          exc.strerror or exc, line.strip())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
